"""Building blocks shared by the heads: MLP, sine position encodings, input checks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MLP", "sine_position_1d", "sine_position_2d", "check_shape", "meta_value"]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (DETR's box/span MLP)."""

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_dim)`` -> ``(..., out_dim)``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def sine_position_1d(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Sine/cosine encoding of ``length`` positions spread over [0, 2 pi]: ``(length, dim)``."""
    position = torch.linspace(0, 1, length, device=device) * 2 * math.pi
    freqs = 10000 ** (torch.arange(dim // 2, device=device, dtype=torch.float32) * 2 / dim)
    angles = position[:, None] / freqs[None, :]
    enc = torch.cat((angles.sin(), angles.cos()), dim=-1)
    if dim % 2:
        enc = torch.cat((enc, torch.zeros(length, 1, device=device)), dim=-1)
    return enc


def sine_position_2d(
    height: int, width: int, dim: int, device: torch.device | None = None
) -> Tensor:
    """2-D sinusoidal encoding of a row-major ``height x width`` grid: ``(height * width, dim)``.

    Half the channels encode the row, half the column (DETR's ``PositionEmbeddingSine``).
    """
    half = dim // 2
    rows = sine_position_1d(height, half, device)
    cols = sine_position_1d(width, dim - half, device)
    grid = torch.cat(
        (rows[:, None, :].expand(height, width, half), cols[None, :, :].expand(height, width, -1)),
        dim=-1,
    )
    return grid.reshape(height * width, dim)


def check_shape(tensor: Tensor, name: str, expected: Sequence[int | str]) -> dict[str, int]:
    """Raise ``ValueError`` unless ``tensor`` has ``len(expected)`` dims matching ``expected``.

    Integers must match exactly; strings name a dimension and bind its size, and the bindings
    are returned (so callers can compare dims across tensors).
    """
    sizes: dict[str, int] = {}
    desc = "(" + ", ".join(str(e) for e in expected) + ")"
    if tensor.ndim != len(expected):
        raise ValueError(f"{name}: expected {desc}, got shape {tuple(tensor.shape)}")
    for got, want in zip(tensor.shape, expected, strict=True):
        if isinstance(want, int) and got != want:
            raise ValueError(f"{name}: expected {desc}, got shape {tuple(tensor.shape)}")
        if isinstance(want, str):
            if sizes.setdefault(want, got) != got:
                raise ValueError(f"{name}: expected {desc}, got shape {tuple(tensor.shape)}")
    return sizes


def meta_value(meta: Sequence[Mapping[str, Any]], index: int, key: str) -> Any:
    """``meta[index][key]``, or a ``ValueError`` naming the sample and the missing key."""
    if index >= len(meta):
        raise ValueError(f"meta: expected one dict per sample, got {len(meta)} for sample {index}")
    if key not in meta[index]:
        raise ValueError(f"meta[{index}]: missing key {key!r}")
    return meta[index][key]

"""Building blocks shared by the heads: MLP, sine position encodings, patch grids, input checks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DETR_MLP_LAYERS",
    "MLP",
    "CountedLoss",
    "sine_position_1d",
    "sine_position_2d",
    "grid_of",
    "check_shape",
    "meta_value",
    "meta_size",
]

DETR_MLP_LAYERS = 3
"""Depth of the prediction MLPs (DETR's box MLP, Moment-DETR's span MLP, SAM's hypernetwork)."""


class CountedLoss:
    """A head whose ``criterion`` averages its terms over counted items (boxes, frames, spans):
    ``loss_count_keys`` names them, ``loss_counts(output, targets)`` counts them in a batch, and
    ``loss(..., normalizers=...)`` takes their totals over all processes
    (:mod:`tpo.losses.normalizers`). ``loss`` returns the terms unweighted; ``weight_dict`` is the
    criterion's ``{term: weight}`` (:func:`tpo.losses.weighted`)."""

    criterion: nn.Module

    @property
    def loss_count_keys(self) -> tuple[str, ...]:
        return tuple(self.criterion.count_keys)

    @property
    def weight_dict(self) -> dict[str, float]:
        """The criterion's ``{term: weight}`` (the same dict: changing it changes the criterion's)."""
        return self.criterion.weight_dict


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


def grid_of(num_tokens: int, grid_size: tuple[int, int] | None, name: str) -> tuple[int, int]:
    """The ``(h, w)`` patch grid of ``num_tokens`` row-major tokens.

    ``grid_size`` if given (it must multiply to ``num_tokens``), else a square grid, which
    requires ``num_tokens`` to be a perfect square; ``ValueError`` naming ``name`` otherwise.
    """
    if grid_size is None:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"{name}: {num_tokens} tokens are not a square grid; pass grid_size=(h, w)")
        return side, side
    if grid_size[0] * grid_size[1] != num_tokens:
        raise ValueError(f"{name}: grid_size {tuple(grid_size)} does not hold {num_tokens} tokens")
    return int(grid_size[0]), int(grid_size[1])


def check_shape(
    tensor: Tensor,
    name: str,
    expected: Sequence[int | str],
    widths: Mapping[str, tuple[int, str]] | None = None,
) -> dict[str, int]:
    """Raise ``ValueError`` unless ``tensor`` has ``len(expected)`` dims matching ``expected``.

    Integers must match exactly; strings name a dimension and bind its size, and the bindings
    are returned (so callers can compare dims across tensors). ``widths`` maps a named dimension
    to ``(size, option)``, the size a module was built for and the constructor argument that
    set it, e.g. ``{"D": (256, "embed_dim")}``; a mismatch names the tensor, the dimension, the
    expected and the actual size (instead of the first layer's shape error deep inside).
    """
    sizes: dict[str, int] = {}
    desc = "(" + ", ".join(str(e) for e in expected) + ")"
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name}: expected a tensor {desc}, got {type(tensor).__name__}")
    if tensor.ndim != len(expected):
        raise ValueError(f"{name}: expected {desc}, got shape {tuple(tensor.shape)}")
    for got, want in zip(tensor.shape, expected, strict=True):
        if isinstance(want, int) and got != want:
            raise ValueError(f"{name}: expected {desc}, got shape {tuple(tensor.shape)}")
        if isinstance(want, str):
            if sizes.setdefault(want, got) != got:
                raise ValueError(f"{name}: expected {desc}, got shape {tuple(tensor.shape)}")
    for dim, (size, option) in (widths or {}).items():
        if sizes.get(dim, size) != size:
            raise ValueError(
                f"{name}: expected {desc} with {dim} = {size} (the head's {option}), got shape "
                f"{tuple(tensor.shape)}, i.e. {dim} = {sizes[dim]}"
            )
    return sizes


def meta_value(meta: Sequence[Mapping[str, Any]], index: int, key: str) -> Any:
    """``meta[index][key]``, or a ``ValueError`` naming the sample and the missing key."""
    if index >= len(meta):
        raise ValueError(f"meta: expected one dict per sample, got {len(meta)} for sample {index}")
    if not isinstance(meta[index], Mapping):
        raise ValueError(f"meta[{index}]: expected a dict, got {type(meta[index]).__name__}")
    if key not in meta[index]:
        raise ValueError(f"meta[{index}]: missing key {key!r}")
    return meta[index][key]


def meta_size(meta: Sequence[Mapping[str, Any]], index: int, key: str = "image_size") -> tuple[int, int]:
    """``meta[index][key]`` as ``(height, width)`` whole pixels > 0, or a ``ValueError`` naming
    the sample, the key and what it holds."""
    value = meta_value(meta, index, key)
    try:
        height, width = (float(v) for v in value)
    except (TypeError, ValueError):
        message = f"meta[{index}][{key!r}]: expected (height, width) in pixels, got {value!r}"
        raise ValueError(message) from None
    if not all(math.isfinite(v) and v >= 1 and v == int(v) for v in (height, width)):
        raise ValueError(
            f"meta[{index}][{key!r}]: expected whole (height, width) >= 1 pixels, got {value!r}"
        )
    return int(height), int(width)

"""Box head for region grounding / referring expressions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tpo.heads.base import MLP, CountedLoss, check_shape, meta_size, sine_position_2d
from tpo.heads.localizer import PatchLocalizer
from tpo.losses.boxes import BoxCriterion
from tpo.ops.boxes import boxes_to_pixels, check_normalized_boxes

__all__ = ["BoxHead", "BoxOutput", "BoxPrediction", "grid_of"]


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


@dataclass
class BoxOutput:
    """Raw output of :class:`BoxHead`: ``boxes (B, 4)`` normalised (cx, cy, w, h); with visual
    tokens also ``patch_logits (B, N)`` (where the object is) on the ``grid_size`` grid."""

    boxes: Tensor
    patch_logits: Tensor | None = None
    grid_size: tuple[int, int] | None = None


@dataclass
class BoxPrediction:
    """One box in absolute pixels: ``box_xyxy (4,)`` (x1, y1, x2, y2)."""

    box_xyxy: Tensor


class BoxHead(CountedLoss, nn.Module):
    """Task embedding -> one normalised box, optionally refined over the frame's tokens.

    The projected task embedding is a single query; with ``visual`` given it passes through
    ``num_layers`` transformer decoder layers that cross-attend to the projected visual tokens
    (plus 2-D sine positions of their patch grid). An MLP with a sigmoid gives (cx, cy, w, h).

    Args:
        embed_dim: ``D``, size of the task embedding.
        visual_dim: ``D_v``, size of the visual tokens.
        hidden_dim: width of the query and the decoder.
        num_heads: attention heads.
        num_layers: decoder layers used when ``visual`` is given.
        dim_feedforward: feed-forward width.
        dropout: dropout in the decoder layers.
        criterion: the loss; default :class:`BoxCriterion` (L1 5, GIoU 2).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        visual_dim: int,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_layers: int = 2,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        criterion: BoxCriterion | None = None,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.visual_dim = visual_dim
        self.hidden_dim = hidden_dim
        self.task_proj = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden_dim))
        self.visual_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, hidden_dim))
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                hidden_dim, num_heads, dim_feedforward, dropout, batch_first=True, norm_first=True
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.box_head = MLP(in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=4, num_layers=3)
        self.localizer = PatchLocalizer(hidden_dim=hidden_dim)
        self.criterion = criterion if criterion is not None else BoxCriterion()

    def forward(
        self,
        task_embeds: Tensor,
        visual: Tensor | None = None,
        grid_size: tuple[int, int] | None = None,
    ) -> BoxOutput:
        """Predict one box per sample.

        Args:
            task_embeds: ``(B, D)`` task embedding (LLM hidden state at the box token).
            visual: ``(B, N, D_v)`` visual tokens of the frame, row-major over the patch
                grid, or ``None`` (box from the task embedding alone).
            grid_size: ``(h, w)`` with ``h * w = N``; default a square grid.
        """
        sizes = check_shape(task_embeds, "task_embeds", ("B", "D"), {"D": (self.embed_dim, "embed_dim")})
        if visual is not None:
            check_shape(visual, "visual", (sizes["B"], "N", "D_v"), {"D_v": (self.visual_dim, "visual_dim")})
        query = self.task_proj(task_embeds)[:, None]
        if visual is not None:
            height, width = grid_of(visual.shape[1], grid_size, "visual")
            memory = self.visual_proj(visual) + sine_position_2d(
                height, width, self.hidden_dim, visual.device
            )
            for layer in self.layers:
                query = layer(query, memory)
            boxes, logits = self.localizer(self.norm(query[:, 0]), memory, (height, width))
            return BoxOutput(boxes=boxes, patch_logits=logits, grid_size=(height, width))
        return BoxOutput(boxes=self.box_head(self.norm(query[:, 0])).sigmoid())

    def loss_counts(self, output: BoxOutput, targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{"boxes": B}``, what the terms average over."""
        return self.criterion.counts(targets["boxes"])

    def loss(
        self,
        output: BoxOutput,
        targets: Mapping[str, Tensor],
        *,
        normalizers: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """``loss_bbox`` and ``loss_giou`` against ``targets["boxes"] (B, 4)`` normalised cxcywh;
        ``normalizers`` as :mod:`tpo.losses.normalizers` (default this batch's counts).

        ``ValueError`` naming ``targets['boxes']`` and the sample for a wrong shape, a NaN box, a
        box with ``w, h <= 0`` or one that leaves [0, 1].
        """
        if not isinstance(targets, Mapping):
            raise ValueError(
                "targets: expected a dict with 'boxes' ((B, 4) normalised cxcywh), "
                f"got {type(targets).__name__}"
            )
        if "boxes" not in targets:
            raise ValueError("targets: missing key 'boxes' ((B, 4) normalised cxcywh)")
        check_shape(targets["boxes"], "targets['boxes']", tuple(output.boxes.shape))
        check_normalized_boxes(targets["boxes"], "targets['boxes']")
        return self.criterion(
            output.boxes,
            targets["boxes"],
            patch_logits=output.patch_logits,
            grid_size=output.grid_size,
            normalizers=normalizers,
        )

    @torch.no_grad()
    def postprocess(self, output: BoxOutput, meta: Sequence[Mapping[str, Any]]) -> list[BoxPrediction]:
        """Absolute xyxy pixels, clamped to the image.

        Args:
            output: this head's forward output.
            meta: ``B`` dicts with ``"image_size"``: ``(height, width)`` in pixels.
        """
        return [
            BoxPrediction(
                box_xyxy=boxes_to_pixels(box.detach(), meta_size(meta, b, "image_size")).cpu()
            )
            for b, box in enumerate(output.boxes)
        ]

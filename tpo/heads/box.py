"""Box head for region grounding / referring expressions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tpo.heads.base import DETR_MLP_LAYERS, MLP, CountedLoss, check_shape, grid_of, meta_size
from tpo.heads.grounding import GroundingDecoder, box_targets
from tpo.losses.box import BoxCriterion
from tpo.ops.boxes import boxes_to_pixels

__all__ = ["BoxHead", "BoxOutput", "BoxPrediction"]


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

    The projected task embedding is a single query; with ``visual`` given it is the one-frame
    case of the :class:`~tpo.heads.grounding.GroundingDecoder` (``num_layers`` decoder layers
    cross-attending to the frame's tokens, then the patch localizer). Without ``visual`` an MLP
    with a sigmoid gives (cx, cy, w, h) from the task embedding alone.

    Args:
        embed_dim: ``D``, size of the task embedding.
        visual_dim: ``D_v``, size of the visual tokens.
        hidden_dim: width of the query and the decoder.
        num_heads: attention heads.
        num_layers: decoder layers used when ``visual`` is given.
        dim_feedforward: feed-forward width.
        dropout: dropout in the decoder layers.
        criterion: the loss; default :class:`BoxCriterion` (L1 5, GIoU 2, deltas 1, patch KL 1).
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
        self.decoder = GroundingDecoder(
            embed_dim=embed_dim,
            visual_dim=visual_dim,
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            num_layers=num_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            temporal=False,
        )
        self.box_head = MLP(in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=4, num_layers=DETR_MLP_LAYERS)
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
        query = self.decoder.embed_task(task_embeds)
        if visual is None:
            return BoxOutput(boxes=self.box_head(self.decoder.norm(query)).sigmoid())
        check_shape(visual, "visual", (sizes["B"], "N", "D_v"), {"D_v": (self.visual_dim, "visual_dim")})
        grid = grid_of(visual.shape[1], grid_size, "visual")
        memory = self.decoder.embed_frames(visual[:, None], grid)  # one frame: T = 1
        _, boxes, logits = self.decoder(query[:, None], memory, grid)
        return BoxOutput(boxes=boxes[:, 0], patch_logits=logits[:, 0], grid_size=grid)

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
        """Unweighted ``loss_bbox``, ``loss_giou``, ``loss_delta`` (and ``loss_patch`` with visual
        tokens) against ``targets["boxes"] (B, 4)`` normalised cxcywh; weights in :attr:`weight_dict`.
        ``normalizers`` as :mod:`tpo.losses.normalizers` (default this batch's counts).

        ``ValueError`` naming ``targets['boxes']`` and the sample for a wrong shape, a NaN box, a
        box with ``w, h <= 0`` or one that leaves [0, 1].
        """
        boxes, _ = box_targets(targets, output.boxes)
        return self.criterion(
            output.boxes,
            boxes,
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

"""Tracking criterion: the box losses on visible frames plus the visibility BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.losses.box import BoxCriterion
from tpo.losses.normalizers import Normalizers, normalizer

__all__ = ["TrackingCriterion"]


class TrackingCriterion(nn.Module):
    """Per-frame box loss on visible frames plus visibility BCE.

    Terms (unweighted; ``weight_dict`` holds the weights): ``loss_bbox`` (5), ``loss_giou`` (2),
    ``loss_delta`` (1) and, with patch scores, ``loss_patch`` (1) from :class:`BoxCriterion` over
    visible frames; ``loss_visible`` (1): BCE of the visibility logits against the visible flags,
    mean over all frames. Means over the visible ``"boxes"`` and over all ``"frames"``
    (:mod:`tpo.losses.normalizers`).
    """

    count_keys = ("boxes", "frames")

    def __init__(self, *, weight_l1: float = 5.0, weight_giou: float = 2.0, weight_delta: float = 1.0,
                 weight_patch: float = 1.0, weight_visible: float = 1.0):
        super().__init__()
        self.box = BoxCriterion(weight_l1=weight_l1, weight_giou=weight_giou, weight_delta=weight_delta,
                                weight_patch=weight_patch)
        self.weight_dict = {**self.box.weight_dict, "loss_visible": weight_visible}

    @staticmethod
    def counts(target_visible: Tensor) -> dict[str, Tensor]:
        """Visible ``"boxes"`` and all ``"frames"`` of ``target_visible (B, T)`` bool."""
        visible = target_visible.bool()
        frames = torch.tensor(float(visible.numel()), device=visible.device)
        return {"boxes": visible.sum().float(), "frames": frames}

    def forward(
        self,
        boxes: Tensor,
        visible_logits: Tensor,
        target_boxes: Tensor,
        target_visible: Tensor,
        *,
        patch_logits: Tensor | None = None,
        grid_size: tuple[int, int] | None = None,
        normalizers: Normalizers | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted terms.

        Args:
            boxes: ``(B, T, 4)`` predicted normalised cxcywh.
            visible_logits: ``(B, T)`` visibility logits.
            target_boxes: ``(B, T, 4)`` target normalised cxcywh (any value on invisible frames).
            target_visible: ``(B, T)`` bool.
            patch_logits: optional ``(B, T, N)`` patch scores on the ``grid_size`` grid.
            normalizers: ``{"boxes", "frames"}`` over all processes (default this batch's counts).
        """
        target_visible = target_visible.to(boxes.device).bool()
        losses = self.box(
            boxes, target_boxes, target_visible, patch_logits=patch_logits, grid_size=grid_size,
            normalizers=normalizers,
        )
        frames = normalizer(normalizers, "frames", self.counts(target_visible)["frames"])
        bce = F.binary_cross_entropy_with_logits(
            visible_logits.float(), target_visible.float(), reduction="sum"
        )
        losses["loss_visible"] = bce / frames
        return losses

"""Box regression and tracking criteria (DETR box losses, torchvision box algebra)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou_elementwise

__all__ = ["BoxCriterion", "TrackingCriterion"]


class BoxCriterion(nn.Module):
    """L1 + GIoU on normalised (cx, cy, w, h) boxes, DETR weights 5 and 2.

    Terms: ``loss_bbox`` (L1 summed over the 4 coordinates, mean over boxes) and
    ``loss_giou`` (``1 - GIoU``, mean over boxes), both already weighted.
    """

    def __init__(self, *, weight_l1: float = 5.0, weight_giou: float = 2.0):
        super().__init__()
        self.weight_l1 = weight_l1
        self.weight_giou = weight_giou

    def forward(
        self, pred: Tensor, target: Tensor, valid: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Loss over the boxes where ``valid`` is True.

        Args:
            pred: ``(..., 4)`` predicted normalised (cx, cy, w, h).
            target: ``(..., 4)`` target normalised (cx, cy, w, h).
            valid: optional ``(...)`` bool; boxes to include (default all). With none valid
                both terms are 0 and still part of the graph.
        """
        pred = pred.float()
        target = target.float().to(pred.device)
        if valid is None:
            valid = torch.ones(pred.shape[:-1], dtype=torch.bool, device=pred.device)
        valid = valid.to(pred.device).bool()
        num = valid.sum().clamp(min=1)
        l1 = (pred - target).abs().sum(-1)
        giou = generalized_box_iou_elementwise(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
        zero = pred.sum() * 0
        return {
            "loss_bbox": self.weight_l1 * (torch.where(valid, l1, 0.0).sum() / num + zero),
            "loss_giou": self.weight_giou * (torch.where(valid, 1 - giou, 0.0).sum() / num + zero),
        }


class TrackingCriterion(nn.Module):
    """Per-frame box loss on visible frames plus visibility BCE.

    Terms: ``loss_bbox`` (5) and ``loss_giou`` (2) from :class:`BoxCriterion` over visible
    frames, ``loss_visible`` (1): BCE of the visibility logits against the visible flags, mean
    over all frames.
    """

    def __init__(
        self, *, weight_l1: float = 5.0, weight_giou: float = 2.0, weight_visible: float = 1.0
    ):
        super().__init__()
        self.box = BoxCriterion(weight_l1=weight_l1, weight_giou=weight_giou)
        self.weight_visible = weight_visible

    def forward(
        self, boxes: Tensor, visible_logits: Tensor, target_boxes: Tensor, target_visible: Tensor
    ) -> dict[str, Tensor]:
        """Args: ``boxes (B, T, 4)``, ``visible_logits (B, T)``, ``target_boxes (B, T, 4)``,
        ``target_visible (B, T)`` bool (all normalised cxcywh)."""
        target_visible = target_visible.to(boxes.device).bool()
        losses = self.box(boxes, target_boxes, target_visible)
        losses["loss_visible"] = self.weight_visible * F.binary_cross_entropy_with_logits(
            visible_logits.float(), target_visible.float()
        )
        return losses

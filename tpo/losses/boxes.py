"""Box regression and tracking criteria (DETR box losses, torchvision box algebra)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.losses.normalizers import Normalizers, normalizer
from tpo.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou_elementwise, patch_targets

__all__ = ["BoxCriterion", "TrackingCriterion", "patch_kl_loss"]


def patch_kl_loss(
    logits: Tensor, boxes: Tensor, grid_size: tuple[int, int], valid: Tensor, num: Tensor | None = None
) -> Tensor:
    """Mean over ``valid`` rows of ``KL(target || softmax(logits))``; 0 (still in the graph of
    ``logits``) with no valid row.

    Args:
        logits: ``(..., N)`` patch scores.
        boxes: ``(..., 4)`` target normalised cxcywh.
        grid_size: ``(h, w)`` with ``h * w = N``.
        valid: ``(...)`` bool rows to include (visible frames).
        num: the mean's denominator (default: the number of valid rows, at least 1).
    """
    target = patch_targets(boxes.to(logits.device), grid_size)
    log_prob = F.log_softmax(logits.float(), dim=-1)
    kl = (target * (torch.log(target.clamp(min=1e-12)) - log_prob)).sum(-1)
    valid = valid.to(logits.device)
    num = valid.sum().clamp(min=1) if num is None else num
    return torch.where(valid, kl, 0.0).sum() / num


class BoxCriterion(nn.Module):
    """L1 + GIoU on normalised (cx, cy, w, h) boxes, DETR weights 5 and 2.

    Terms (unweighted; ``weight_dict`` holds the weights): ``loss_bbox`` (L1 summed over the 4
    coordinates, mean over boxes, weight ``weight_l1``) and ``loss_giou`` (``1 - GIoU``, mean
    over boxes, ``weight_giou``); with patch scores also ``loss_patch`` (``weight_patch``,
    :func:`patch_kl_loss`): KL from the target box's distribution over the patches (each patch
    weighs the box area it covers, :func:`tpo.ops.boxes.patch_targets`) to the softmax of the
    scores. Every term is a mean over the ``"boxes"`` (:mod:`tpo.losses.normalizers`).
    """

    count_keys = ("boxes",)

    def __init__(self, *, weight_l1: float = 5.0, weight_giou: float = 2.0, weight_patch: float = 1.0):
        super().__init__()
        self.weight_dict = {"loss_bbox": weight_l1, "loss_giou": weight_giou, "loss_patch": weight_patch}

    @staticmethod
    def counts(target: Tensor, valid: Tensor | None = None) -> dict[str, Tensor]:
        """``{"boxes": number of target boxes included}`` for ``target (..., 4)``."""
        if valid is None:
            return {"boxes": torch.tensor(float(target[..., 0].numel()), device=target.device)}
        return {"boxes": valid.bool().sum().float()}

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        valid: Tensor | None = None,
        *,
        patch_logits: Tensor | None = None,
        grid_size: tuple[int, int] | None = None,
        normalizers: Normalizers | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted terms over the boxes where ``valid`` is True.

        Args:
            pred: ``(..., 4)`` predicted normalised (cx, cy, w, h).
            target: ``(..., 4)`` target normalised (cx, cy, w, h).
            valid: optional ``(...)`` bool; boxes to include (default all). With none valid
                every term is 0 and still part of the graph of ``pred``.
            patch_logits: optional ``(..., N)`` patch scores on the ``grid_size`` grid.
            normalizers: ``{"boxes": n}`` over all processes (default this batch's count).
        """
        pred = pred.float()
        target = target.float().to(pred.device)
        if valid is None:
            valid = torch.ones(pred.shape[:-1], dtype=torch.bool, device=pred.device)
        valid = valid.to(pred.device).bool()
        num = normalizer(normalizers, "boxes", valid.sum().float())
        l1 = (pred - target).abs().sum(-1)
        giou = generalized_box_iou_elementwise(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
        losses = {
            "loss_bbox": torch.where(valid, l1, 0.0).sum() / num,
            "loss_giou": torch.where(valid, 1 - giou, 0.0).sum() / num,
        }
        if patch_logits is not None:
            losses["loss_patch"] = patch_kl_loss(patch_logits, target, grid_size, valid, num)
        return losses


class TrackingCriterion(nn.Module):
    """Per-frame box loss on visible frames plus visibility BCE.

    Terms (unweighted; ``weight_dict`` holds the weights): ``loss_bbox`` (5), ``loss_giou`` (2)
    and, with patch scores, ``loss_patch`` (1) from :class:`BoxCriterion` over visible frames;
    ``loss_visible`` (1): BCE of the visibility logits against the visible flags, mean over all
    frames. Means over the visible ``"boxes"`` and over all ``"frames"``
    (:mod:`tpo.losses.normalizers`).
    """

    count_keys = ("boxes", "frames")

    def __init__(self, *, weight_l1: float = 5.0, weight_giou: float = 2.0, weight_visible: float = 1.0):
        super().__init__()
        self.box = BoxCriterion(weight_l1=weight_l1, weight_giou=weight_giou)
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

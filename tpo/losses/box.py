"""Box regression criterion (DETR box losses, torchvision box algebra) and the patch KL term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.losses.normalizers import Normalizers, normalizer
from tpo.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou_elementwise, patch_targets

__all__ = ["BoxCriterion", "patch_kl_loss"]


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

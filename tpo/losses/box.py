"""Box regression criterion (DETR box losses, torchvision box algebra) and the patch KL term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.losses.normalizers import Normalizers, normalizer
from tpo.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou_elementwise, patch_targets

__all__ = ["BoxCriterion", "box_delta_loss", "patch_kl_loss"]


def box_delta_loss(pred: Tensor, target: Tensor, beta: float = 1.0 / 9) -> Tensor:
    """Smooth-L1 of the box deltas of ``pred`` relative to ``target`` (Faster R-CNN's
    parametrisation): ``(dx / w, dy / h, log(w' / w), log(h' / h))``, summed over the four.

    Scale-free, unlike the L1 of normalised coordinates: a 0.02 error costs a 0.1-wide box as
    much as a 0.02 / 0.1 error costs a 1.0-wide one, so small boxes are fitted to the same IoU
    as big ones.

    Args:
        pred, target: ``(..., 4)`` normalised (cx, cy, w, h), sizes > 0.
        beta: where smooth-L1 turns from quadratic to linear (Fast R-CNN: 1 / 9).

    Returns:
        ``(...)`` per-box loss.
    """
    size = target[..., 2:].clamp(min=1e-6)
    deltas = torch.cat(((pred[..., :2] - target[..., :2]) / size,
                        torch.log(pred[..., 2:].clamp(min=1e-6) / size)), -1)
    return F.smooth_l1_loss(deltas, torch.zeros_like(deltas), beta=beta, reduction="none").sum(-1)


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
    """DETR's L1 + GIoU on normalised (cx, cy, w, h) boxes, weights 5 and 2, plus scale-free deltas.

    Terms (unweighted; ``weight_dict`` holds the weights): ``loss_bbox`` (L1 summed over the 4
    coordinates, mean over boxes, weight ``weight_l1``), ``loss_giou`` (``1 - GIoU``, mean over
    boxes, ``weight_giou``) and ``loss_delta`` (:func:`box_delta_loss`, smooth-L1 of the box
    deltas relative to the target's size, ``weight_delta``): the L1 of normalised coordinates
    fades as a box gets small, so a 0.1-wide box stuck 0.02 off (IoU ~0.67) costs little; the
    deltas keep pulling until the IoU is high at every size. With patch scores also
    ``loss_patch`` (``weight_patch``, :func:`patch_kl_loss`): KL from the target box's
    distribution over the patches (each patch weighs the box area it covers,
    :func:`tpo.ops.boxes.patch_targets`) to the softmax of the scores. Every term is a mean over
    the ``"boxes"`` (:mod:`tpo.losses.normalizers`).
    """

    count_keys = ("boxes",)

    def __init__(self, *, weight_l1: float = 5.0, weight_giou: float = 2.0, weight_delta: float = 1.0,
                 weight_patch: float = 1.0):
        super().__init__()
        self.weight_dict = {"loss_bbox": weight_l1, "loss_giou": weight_giou, "loss_delta": weight_delta,
                            "loss_patch": weight_patch}

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
            "loss_delta": torch.where(valid, box_delta_loss(pred, target), 0.0).sum() / num,
        }
        if patch_logits is not None:
            losses["loss_patch"] = patch_kl_loss(patch_logits, target, grid_size, valid, num)
        return losses

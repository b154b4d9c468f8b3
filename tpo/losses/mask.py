"""Mask criterion: SAM2's focal + dice + IoU-prediction losses, or LISA's BCE + dice."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.losses.normalizers import Normalizers, normalizer
from tpo.ops.masks import MASK_THRESHOLD, bce_loss, dice_loss, focal_loss, mask_iou

__all__ = ["MaskCriterion"]

_DEFAULT_WEIGHTS = {"focal": (20.0, 1.0), "bce": (2.0, 0.5)}


class MaskCriterion(nn.Module):
    """Loss of mask logits against bool masks, one value per mask averaged over masks.

    Terms (unweighted; ``weight_dict`` holds the weights):

    - ``loss_mask``: focal (``mask_loss="focal"``, weight 20, SAM2) or BCE
      (``mask_loss="bce"``, weight 2.0, LISA), pixel mean per mask.
    - ``loss_dice``: soft dice (weight 1 for focal, 0.5 for BCE).
    - ``loss_iou``: MSE between the predicted IoU and the actual IoU of the mask thresholded at
      :data:`~tpo.ops.masks.MASK_THRESHOLD` (weight 1); only when predicted IoUs are given and
      its weight is not 0.
    - ``loss_class``: when object-score logits are given (SAM2's ``pred_obj_scores``), BCE of
      "the object is in this frame" (weight 1). As in SAM2's training loss, the mask, dice and
      IoU terms then count only the frames where the target is non-empty; an absent object is
      the object score's job, and :func:`~tpo.heads.mask.postprocess_masks` empties its frames.

    ``weight_mask`` and ``weight_dice`` left as ``None`` take the defaults of ``mask_loss``.
    The mask, dice and IoU terms are means over the ``"masks"`` they count, ``loss_class`` over all
    ``"frames"`` (:mod:`tpo.losses.normalizers`).
    """

    count_keys = ("masks", "frames")

    def __init__(
        self,
        *,
        mask_loss: Literal["focal", "bce"] = "focal",
        weight_mask: float | None = None,
        weight_dice: float | None = None,
        weight_iou: float = 1.0,
        weight_class: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if mask_loss not in _DEFAULT_WEIGHTS:
            raise ValueError(f"mask_loss: expected 'focal' or 'bce', got {mask_loss!r}")
        default_mask, default_dice = _DEFAULT_WEIGHTS[mask_loss]
        self.mask_loss = mask_loss
        self.weight_dict = {
            "loss_mask": default_mask if weight_mask is None else weight_mask,
            "loss_dice": default_dice if weight_dice is None else weight_dice,
            "loss_iou": weight_iou,
            "loss_class": weight_class,
        }
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @staticmethod
    def counts(target: Tensor, *, object_scores: bool) -> dict[str, Tensor]:
        """``"masks"`` the mask terms count (every mask, or only the non-empty ones when the head
        predicts object scores) and all ``"frames"`` of ``target (..., H, W)`` bool."""
        frames = torch.tensor(float(target[..., 0, 0].numel()), device=target.device)
        masks = target.flatten(-2).any(-1).sum().float() if object_scores else frames
        return {"masks": masks, "frames": frames}

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        iou_pred: Tensor | None = None,
        object_logits: Tensor | None = None,
        *,
        normalizers: Normalizers | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted terms.

        Args:
            logits: ``(..., H, W)`` mask logits.
            target: ``(..., H, W)`` bool masks.
            iou_pred: optional ``(...)`` predicted IoU of each thresholded mask.
            object_logits: optional ``(...)`` object-score logits.
            normalizers: ``{"masks", "frames"}`` over all processes (default this batch's counts).
        """
        if self.mask_loss == "focal":
            per_mask = focal_loss(logits, target, alpha=self.focal_alpha, gamma=self.focal_gamma)
        else:
            per_mask = bce_loss(logits, target)
        per_dice = dice_loss(logits, target)
        present = target.flatten(-2).any(-1).to(per_mask.dtype)
        weight = torch.ones_like(per_mask) if object_logits is None else present
        local = self.counts(target, object_scores=object_logits is not None)
        count = normalizer(normalizers, "masks", local["masks"])
        losses = {
            "loss_mask": (per_mask * weight).sum() / count,
            "loss_dice": (per_dice * weight).sum() / count,
        }
        if iou_pred is not None and self.weight_dict["loss_iou"]:
            actual = mask_iou(logits.detach() > MASK_THRESHOLD, target)
            per_iou = F.mse_loss(iou_pred.float(), actual, reduction="none")
            losses["loss_iou"] = (per_iou * weight).sum() / count
        if object_logits is not None:
            bce = F.binary_cross_entropy_with_logits(object_logits.float(), present, reduction="sum")
            frames = normalizer(normalizers, "frames", local["frames"])
            losses["loss_class"] = bce / frames
        return losses

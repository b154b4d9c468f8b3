"""Mask losses and overlap on ``(..., H, W)`` tensors (SAM / SAM2 training conventions).

Losses take mask logits and float or bool targets and return one value per mask, ``(...)``,
so callers choose how to reduce (SAM2 averages over objects).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

__all__ = [
    "MASK_THRESHOLD",
    "OBJECT_SCORE_THRESHOLD",
    "dice_loss",
    "focal_loss",
    "bce_loss",
    "mask_iou",
    "resize_mask_logits",
]

MASK_THRESHOLD = 0.0
"""Mask logit above which a pixel belongs to the mask (SAM's ``mask_threshold``)."""

OBJECT_SCORE_THRESHOLD = 0.0
"""Object-score logit at or above which the object counts as present in a frame (probability
0.5); post-processing empties the frames below it (SAM2's object score)."""


def _check_pair(logits: Tensor, targets: Tensor) -> None:
    if logits.shape != targets.shape or logits.ndim < 2:
        raise ValueError(
            f"logits, targets: expected two (..., H, W) tensors of one shape, got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )


def dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft dice loss, ``1 - (2 |p t| + s) / (|p| + |t| + s)`` with ``p = sigmoid(logits)``.

    Args:
        logits: ``(..., H, W)`` mask logits.
        targets: ``(..., H, W)`` bool or float in [0, 1].
        smooth: additive smoothing ``s`` (SAM2 uses 1).

    Returns:
        ``(...)`` one loss per mask, in [0, 1].
    """
    _check_pair(logits, targets)
    probs = logits.float().sigmoid().flatten(-2)
    targets = targets.float().flatten(-2)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return 1 - (numerator + smooth) / (denominator + smooth)


def focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017) averaged over pixels: ``(..., H, W)`` -> ``(...)``.

    ``torchvision.ops.sigmoid_focal_loss`` per pixel; ``alpha`` 0.25 and ``gamma`` 2 as in SAM2.
    """
    _check_pair(logits, targets)
    per_pixel = sigmoid_focal_loss(
        logits.float(), targets.float(), alpha=alpha, gamma=gamma, reduction="none"
    )
    return per_pixel.flatten(-2).mean(-1)


def bce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits averaged over pixels: ``(..., H, W)`` -> ``(...)``."""
    _check_pair(logits, targets)
    per_pixel = F.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="none"
    )
    return per_pixel.flatten(-2).mean(-1)


def mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of binary masks: ``(..., H, W)`` bool and ``(..., H, W)`` bool -> ``(...)``.

    Two empty masks have IoU 1 (they agree exactly), as in DAVIS ``db_eval_iou``.
    """
    _check_pair(pred, target)
    pred = pred.bool().flatten(-2)
    target = target.bool().flatten(-2)
    inter = (pred & target).sum(-1).float()
    union = (pred | target).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), 1.0)


def resize_mask_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(..., h, w)`` mask logits to ``(..., H, W)`` = ``size``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    lead = logits.shape[:-2]
    flat = logits.reshape(-1, 1, *logits.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)

"""Single-object tracking metrics (GOT-10k toolkit semantics)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from tpo.metrics.functional.boxes import (
    NORM_PRECISION_THRESHOLDS,
    PRECISION_THRESHOLDS,
    SUCCESS_THRESHOLDS,
    center_error,
    normalized_center_error,
    rect_iou,
)

__all__ = ["TrackingSuccess", "GOT10kMetrics"]


def _check_sequence(pred: Tensor, gt: Tensor, mask: Tensor | None, mask_name: str) -> Tensor:
    if pred.ndim != 2 or pred.shape[-1] != 4:
        raise ValueError(f"pred_xywh: expected (N, 4) boxes, got {tuple(pred.shape)}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt_xywh: expected shape {tuple(pred.shape)}, got {tuple(gt.shape)}")
    if mask is None:
        return torch.ones(pred.shape[0], dtype=torch.bool)
    if mask.shape != (pred.shape[0],):
        raise ValueError(f"{mask_name}: expected shape ({pred.shape[0]},), got {tuple(mask.shape)}")
    return mask.detach().cpu().bool()


class TrackingSuccess(Metric):
    """OTB / LaSOT one-pass evaluation as the GOT-10k toolkit's ``ExperimentOTB`` /
    ``ExperimentLaSOT`` compute it.

    Per sequence: success curve (IoU ``> thr``, thr = linspace(0, 1, 21)), precision curve
    (centre error ``<= thr`` px, 0..50) and normalised precision curve (centre offset divided by
    the ground-truth size, ``<= thr``, linspace(0, 0.5, 51)); curves are averaged over
    sequences. ``success`` (AUC) is the mean of the success curve, ``precision`` the curve at
    20 px, ``norm_precision`` the mean of its curve (the toolkit's LaSOT score). IoU is
    ``inter / (union + eps)`` on ``xywh`` with area ``w * h``; centres are ``x + (w - 1) / 2``.

    Invisible frames: by default every frame with a finite ground-truth box counts (the
    toolkit drops only NaN ground truth); pass ``valid`` (e.g. ``~absent`` from LaSOT's
    ``full_occlusion`` / ``out_of_view`` files) to drop frames as toolkits that ignore absent
    targets do. ``replace_first=True`` overwrites the first prediction with the ground truth
    as the toolkit's LaSOT experiment does (its OTB experiment does not).

    ``update(pred_xywh (N, 4), gt_xywh (N, 4), valid (N,) bool | None)``: one sequence.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, *, replace_first: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.replace_first = replace_first
        self.add_state("success_sum", torch.zeros(len(SUCCESS_THRESHOLDS), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("precision_sum", torch.zeros(len(PRECISION_THRESHOLDS),
                                                    dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("norm_precision_sum", torch.zeros(len(NORM_PRECISION_THRESHOLDS),
                                                         dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("sequences", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred_xywh: Tensor, gt_xywh: Tensor, valid: Tensor | None = None) -> None:
        keep = _check_sequence(pred_xywh, gt_xywh, valid, "valid")
        pred = pred_xywh.detach().cpu().to(torch.float64)
        gt = gt_xywh.detach().cpu().to(torch.float64)
        if self.replace_first and len(pred):
            pred = pred.clone()
            pred[0] = gt[0]
        keep = keep & ~gt.isnan().any(-1)
        pred, gt = pred[keep], gt[keep]
        if len(pred) == 0:
            raise ValueError("gt_xywh: sequence has no valid frame")
        iou = rect_iou(pred, gt)
        self.success_sum += (iou[:, None] > SUCCESS_THRESHOLDS).to(torch.float64).mean(0)
        ce = center_error(pred, gt)
        self.precision_sum += (ce[:, None] <= PRECISION_THRESHOLDS).to(torch.float64).mean(0)
        nce = normalized_center_error(pred, gt)
        self.norm_precision_sum += (nce[:, None] <= NORM_PRECISION_THRESHOLDS).to(
            torch.float64).mean(0)
        self.sequences += 1

    def compute(self) -> dict[str, Tensor]:
        n = self.sequences.clamp(min=1)
        success = self.success_sum / n
        precision = self.precision_sum / n
        norm_precision = self.norm_precision_sum / n
        return {
            "success": success.mean(),
            "precision": precision[20],
            "norm_precision": norm_precision.mean(),
            "success_curve": success,
            "precision_curve": precision,
            "norm_precision_curve": norm_precision,
        }


class GOT10kMetrics(Metric):
    """GOT-10k average overlap (AO) and success rates SR@0.5 / SR@0.75, as the GOT-10k toolkit's
    ``ExperimentGOT10k.report``: IoUs of all sequences are pooled over frames (not averaged
    per sequence), the first (initialisation) frame is skipped, only frames whose target is
    visible (``cover > 0``) count, boxes are clipped to the image when ``image_size`` is given,
    and a success is a strict ``IoU > thr``.

    ``update(pred_xywh (N, 4), gt_xywh (N, 4), visible (N,) bool | None,
    image_size (width, height) | None)``: one sequence.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, *, skip_first: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_first = skip_first
        for name in ("iou_sum", "sr50", "sr75", "frames"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred_xywh: Tensor, gt_xywh: Tensor, visible: Tensor | None = None,
               image_size: tuple[float, float] | None = None) -> None:
        keep = _check_sequence(pred_xywh, gt_xywh, visible, "visible")
        pred = pred_xywh.detach().cpu().to(torch.float64)
        gt = gt_xywh.detach().cpu().to(torch.float64)
        if self.skip_first:
            pred, gt, keep = pred[1:], gt[1:], keep[1:]
        iou = rect_iou(pred, gt, bound=image_size)[keep]
        self.iou_sum += iou.sum()
        self.sr50 += (iou > 0.5).sum()
        self.sr75 += (iou > 0.75).sum()
        self.frames += iou.numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.frames.clamp(min=1)
        return {"AO": self.iou_sum / n, "SR@0.5": self.sr50 / n, "SR@0.75": self.sr75 / n}

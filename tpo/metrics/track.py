"""Single-object tracking metrics (GOT-10k toolkit semantics)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from tpo.metrics._validate import empty_result
from tpo.metrics.functional.boxes import (
    NORM_PRECISION_THRESHOLDS,
    PRECISION_THRESHOLDS,
    SUCCESS_THRESHOLDS,
    center_error,
    check_xywh,
    normalized_center_error,
    rect_iou,
)

__all__ = ["TrackingSuccess", "GOT10kMetrics"]


def _check_sequence(pred: Tensor, gt: Tensor, mask: Tensor | None, mask_name: str) -> Tensor:
    for name, x in (("pred_xywh", pred), ("gt_xywh", gt), (mask_name, mask)):
        if not isinstance(x, Tensor) and (x is not None or name != mask_name):
            raise ValueError(f"{name}: expected a tensor, got {type(x).__name__}")
    if pred.ndim != 2 or pred.shape[-1] != 4:
        raise ValueError(f"pred_xywh: expected (N, 4) boxes, got {tuple(pred.shape)}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt_xywh: expected shape {tuple(pred.shape)}, got {tuple(gt.shape)}")
    if mask is None:
        return torch.ones(pred.shape[0], dtype=torch.bool)
    if mask.shape != (pred.shape[0],):
        raise ValueError(f"{mask_name}: expected shape ({pred.shape[0]},), got {tuple(mask.shape)}")
    return mask.detach().cpu().bool()


def _image_size(size: object) -> tuple[float, float]:
    try:
        w_img, h_img = (float(v) for v in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"image_size: expected (width, height) in pixels, got {size!r}") from None
    if not (w_img > 0 and h_img > 0 and math.isfinite(w_img) and math.isfinite(h_img)):
        raise ValueError(f"image_size: expected (width, height) > 0 in pixels, got {size!r}")
    return w_img, h_img


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

    A box of a scored frame that is NaN / infinite raises ``ValueError`` naming
    ``pred_xywh[frame]`` / ``gt_xywh[frame]``, as does a ground-truth box with a negative width
    or height and a sequence without a scored frame; a predicted box with a negative width or
    height is scored as the toolkit scores it (IoU clipped to [0, 1]). A metric that holds no
    sequence returns NaN everywhere with an :class:`~tpo.metrics.EmptyMetricWarning`.

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
        if not bool(keep.any()):
            raise ValueError("gt_xywh: sequence has no valid frame")
        check_xywh(gt, "gt_xywh", keep)
        check_xywh(pred, "pred_xywh", keep, allow_negative=True)
        pred, gt = pred[keep], gt[keep]
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
        out = {
            "success": success.mean(),
            "precision": precision[20],
            "norm_precision": norm_precision.mean(),
            "success_curve": success,
            "precision_curve": precision,
            "norm_precision_curve": norm_precision,
        }
        return empty_result(self, out, "sequences") if bool(self.sequences == 0) else out


class GOT10kMetrics(Metric):
    """GOT-10k average overlap (AO) and success rates SR@0.5 / SR@0.75, as the GOT-10k toolkit's
    ``ExperimentGOT10k.report``: IoUs of all sequences are pooled over frames (not averaged
    per sequence), the first (initialisation) frame is skipped, only frames whose target is
    visible (``cover > 0``) count, boxes are clipped to the image when ``image_size`` is given,
    and a success is a strict ``IoU > thr``.

    A scored frame (visible, not the first) whose box is NaN / infinite raises ``ValueError``
    naming ``pred_xywh[frame]`` / ``gt_xywh[frame]``, as does a ground-truth box with a negative
    width or height; a predicted one is clipped to width / height 0 with ``image_size`` as the
    toolkit does (and scored with IoU clipped to [0, 1] without it). A metric
    without a scored frame returns NaN everywhere with an :class:`~tpo.metrics.EmptyMetricWarning`.

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
            keep = keep.clone()
            keep[:1] = False
        check_xywh(gt, "gt_xywh", keep)
        check_xywh(pred, "pred_xywh", keep, allow_negative=True)
        if image_size is not None:
            w_img, h_img = _image_size(image_size)
            image_size = (w_img, h_img)
        iou = rect_iou(pred[keep], gt[keep], bound=image_size)
        self.iou_sum += iou.sum()
        self.sr50 += (iou > 0.5).sum()
        self.sr75 += (iou > 0.75).sum()
        self.frames += iou.numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.frames.clamp(min=1)
        out = {"AO": self.iou_sum / n, "SR@0.5": self.sr50 / n, "SR@0.75": self.sr75 / n}
        return empty_result(self, out, "scored frames") if bool(self.frames == 0) else out

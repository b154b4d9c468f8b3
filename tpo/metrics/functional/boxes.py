"""Paired box IoU and single-object-tracking curves (OTB / LaSOT / GOT-10k toolkit semantics).

Boxes for grounding are absolute ``xyxy``; trackers use ``xywh`` (left, top, width, height) as
LaSOT / GOT-10k files do. Areas are ``w * h`` (continuous coordinates, no ``+1``); centres
follow the GOT-10k toolkit's pixel convention ``x + (w - 1) / 2``. Nothing is clipped to the
image unless ``bound`` is given (GOT-10k does that, OTB/LaSOT do not).

For all pairs of two box sets use :func:`torchvision.ops.box_iou`; here boxes are paired row
by row.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tpo.metrics._validate import first_bad

__all__ = [
    "check_xyxy",
    "check_xywh",
    "box_iou",
    "rect_iou",
    "center_error",
    "normalized_center_error",
    "success_curve",
    "precision_curve",
    "normalized_precision_curve",
    "SUCCESS_THRESHOLDS",
    "PRECISION_THRESHOLDS",
    "NORM_PRECISION_THRESHOLDS",
]

# Thresholds are NumPy's linspace values (torch's differ in the last bit at some points).
#: IoU thresholds of the OTB/LaSOT success plot (strict ``iou > thr``).
SUCCESS_THRESHOLDS = torch.from_numpy(np.linspace(0, 1, 21))
#: Centre-error thresholds of the precision plot, 0..50 px (``error <= thr``).
PRECISION_THRESHOLDS = torch.arange(0, 51, dtype=torch.float64)
#: Normalised centre-error thresholds (LaSOT), 0..0.5.
NORM_PRECISION_THRESHOLDS = torch.from_numpy(np.linspace(0, 0.5, 51))


def _check_pair(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    for name, x in zip(names, (a, b), strict=True):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name}: expected a (N, 4) tensor of boxes, got {type(x).__name__}")
    if a.ndim != 2 or a.shape[-1] != 4:
        raise ValueError(f"{names[0]}: expected (N, 4) boxes, got {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{names[1]}: expected shape {tuple(a.shape)} like {names[0]}, "
                         f"got {tuple(b.shape)}")


def _check_finite(boxes: Tensor, name: str, layout: str, valid: Tensor | None) -> None:
    ok = torch.isfinite(boxes).all(-1)
    bad = first_bad(~ok if valid is None else valid & ~ok)
    if bad is not None:
        raise ValueError(f"{name}[{bad[0]}]: box {boxes[bad[0]].tolist()} is not finite; "
                         f"expected {layout} numbers")


def check_xyxy(boxes: Tensor, name: str, role: str | None = None) -> None:
    """``ValueError`` unless every row of ``boxes (N, 4)`` is finite with ``x2 >= x1`` and
    ``y2 >= y1``; the message names ``name[i]`` (and ``role[i]``, the caller's name for it)."""
    _check_finite(boxes, role or name, "(x1, y1, x2, y2)", None)
    bad = first_bad((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if bad is not None:
        i = bad[0]
        where = f" in {role}[{i}]" if role else ""
        raise ValueError(f"{name}[{i}]: expected x2 >= x1 and y2 >= y1, got "
                         f"{boxes[i].tolist()}{where}")


def check_xywh(rects: Tensor, name: str, valid: Tensor | None = None, *,
               allow_negative: bool = False) -> None:
    """``ValueError`` unless every row of ``rects (N, 4)`` (where ``valid``) is finite and, unless
    ``allow_negative``, has ``w >= 0`` and ``h >= 0``; the message names ``name[i]``, ``i`` the
    frame."""
    _check_finite(rects, name, "(x, y, w, h)", valid)
    if allow_negative:
        return
    neg = (rects[:, 2:] < 0).any(-1)
    bad = first_bad(neg if valid is None else valid & neg)
    if bad is not None:
        raise ValueError(f"{name}[{bad[0]}]: box {rects[bad[0]].tolist()} has a negative width "
                         "or height; expected (x, y, w, h) with w >= 0 and h >= 0")


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of row-paired ``xyxy`` boxes: ``boxes1 (N, 4)``, ``boxes2 (N, 4)`` -> ``(N,)``.

    Boxes need finite coordinates, ``x2 >= x1`` and ``y2 >= y1`` (``ValueError`` naming the
    first bad row); boxes outside the image are scored as given. An empty union gives 0.
    """
    _check_pair(boxes1, boxes2, ("boxes1", "boxes2"))
    check_xyxy(boxes1, "boxes1")
    check_xyxy(boxes2, "boxes2")
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).prod(-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).prod(-1)
    union = area1 + area2 - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, 1.0), 0.0)


def _bounded(rects: Tensor, bound: tuple[float, float]) -> Tensor:
    w_img, h_img = bound
    x = rects[:, 0].clamp(0, w_img)
    y = rects[:, 1].clamp(0, h_img)
    w = torch.minimum(rects[:, 2].clamp(min=0), w_img - x)
    h = torch.minimum(rects[:, 3].clamp(min=0), h_img - y)
    return torch.stack([x, y, w, h], -1)


def rect_iou(rects1: Tensor, rects2: Tensor, bound: tuple[float, float] | None = None) -> Tensor:
    """GOT-10k toolkit ``rect_iou`` of row-paired ``xywh`` boxes -> ``(N,)`` in [0, 1].

    ``inter / (union + eps)`` with ``eps`` float64 machine epsilon, clipped to [0, 1]. With
    ``bound = (width, height)`` both box sets are first clipped to the image, as GOT-10k does.
    NaN / infinite numbers raise ``ValueError`` (drop frames without a ground-truth box first,
    as the toolkits do). A negative width or height is scored as the toolkit scores it (area
    ``w * h``, IoU clipped to [0, 1]; with ``bound`` clipped to 0 first).
    """
    _check_pair(rects1, rects2, ("rects1", "rects2"))
    check_xywh(rects1, "rects1", allow_negative=True)
    check_xywh(rects2, "rects2", allow_negative=True)
    r1, r2 = rects1.to(torch.float64), rects2.to(torch.float64)
    if bound is not None:
        r1, r2 = _bounded(r1, bound), _bounded(r2, bound)
    lt = torch.maximum(r1[:, :2], r2[:, :2])
    rb = torch.minimum(r1[:, :2] + r1[:, 2:], r2[:, :2] + r2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = r1[:, 2:].prod(-1) + r2[:, 2:].prod(-1) - inter
    return (inter / (union + torch.finfo(torch.float64).eps)).clamp(0.0, 1.0)


def _centers(rects: Tensor) -> Tensor:
    return rects[:, :2] + (rects[:, 2:] - 1) / 2


def _norm(d: Tensor) -> Tensor:
    """Row norms of ``(N, 2)``; NumPy's correctly rounded sqrt, bit-equal to the toolkit."""
    return torch.from_numpy(np.sqrt(d.pow(2).sum(-1).cpu().numpy()))


def center_error(pred_xywh: Tensor, gt_xywh: Tensor) -> Tensor:
    """Euclidean distance in px between box centres ``x + (w - 1) / 2`` -> ``(N,)``.

    ``ValueError`` for NaN / infinite boxes and ground-truth boxes with a negative width or
    height (the curves below check the same)."""
    _check_pair(pred_xywh, gt_xywh, ("pred_xywh", "gt_xywh"))
    check_xywh(pred_xywh, "pred_xywh", allow_negative=True)
    check_xywh(gt_xywh, "gt_xywh")
    d = _centers(pred_xywh.to(torch.float64)) - _centers(gt_xywh.to(torch.float64))
    return _norm(d)


def normalized_center_error(pred_xywh: Tensor, gt_xywh: Tensor) -> Tensor:
    """Centre offset divided per axis by the ground-truth size (at least 1 px) -> ``(N,)``."""
    _check_pair(pred_xywh, gt_xywh, ("pred_xywh", "gt_xywh"))
    check_xywh(pred_xywh, "pred_xywh", allow_negative=True)
    check_xywh(gt_xywh, "gt_xywh")
    gt = gt_xywh.to(torch.float64)
    d = (_centers(pred_xywh.to(torch.float64)) - _centers(gt)) / gt[:, 2:].clamp(min=1.0)
    return _norm(d)


def _check_frames(pred_xywh: Tensor, gt_xywh: Tensor) -> None:
    _check_pair(pred_xywh, gt_xywh, ("pred_xywh", "gt_xywh"))
    if pred_xywh.shape[0] == 0:
        raise ValueError("pred_xywh: expected (N, 4) boxes with N >= 1 frames, got (0, 4); a "
                         "curve over no frames is undefined")
    check_xywh(pred_xywh, "pred_xywh", allow_negative=True)
    check_xywh(gt_xywh, "gt_xywh")


def success_curve(pred_xywh: Tensor, gt_xywh: Tensor) -> Tensor:
    """OTB/LaSOT success plot: fraction of frames with ``IoU > thr``, thr = linspace(0, 1, 21).

    ``pred_xywh (N, 4)``, ``gt_xywh (N, 4)`` -> ``(21,)`` float64. Its mean is the AUC.
    ``ValueError`` for ``N = 0``: a curve of no frames is undefined.
    """
    _check_frames(pred_xywh, gt_xywh)
    iou = rect_iou(pred_xywh, gt_xywh)
    return (iou[:, None] > SUCCESS_THRESHOLDS).to(torch.float64).mean(0)


def precision_curve(pred_xywh: Tensor, gt_xywh: Tensor) -> Tensor:
    """Precision plot: fraction of frames with centre error ``<= thr`` px, thr = 0..50 -> ``(51,)``.

    Index 20 is the usual "precision at 20 px". ``ValueError`` for ``N = 0``.
    """
    _check_frames(pred_xywh, gt_xywh)
    err = center_error(pred_xywh, gt_xywh)
    return (err[:, None] <= PRECISION_THRESHOLDS).to(torch.float64).mean(0)


def normalized_precision_curve(pred_xywh: Tensor, gt_xywh: Tensor) -> Tensor:
    """LaSOT normalised precision plot, thr = linspace(0, 0.5, 51) -> ``(51,)``; its mean is the
    score the GOT-10k toolkit reports for LaSOT. ``ValueError`` for ``N = 0``."""
    _check_frames(pred_xywh, gt_xywh)
    err = normalized_center_error(pred_xywh, gt_xywh)
    return (err[:, None] <= NORM_PRECISION_THRESHOLDS).to(torch.float64).mean(0)

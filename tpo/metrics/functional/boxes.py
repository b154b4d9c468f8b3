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

__all__ = [
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
    if a.ndim != 2 or a.shape[-1] != 4:
        raise ValueError(f"{names[0]}: expected (N, 4) boxes, got {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{names[1]}: expected shape {tuple(a.shape)} like {names[0]}, "
                         f"got {tuple(b.shape)}")


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of row-paired ``xyxy`` boxes: ``boxes1 (N, 4)``, ``boxes2 (N, 4)`` -> ``(N,)``.

    Boxes need ``x2 >= x1`` and ``y2 >= y1`` (``ValueError`` naming the first bad row);
    boxes outside the image are scored as given. An empty union gives 0.
    """
    _check_pair(boxes1, boxes2, ("boxes1", "boxes2"))
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
        if bool(bad.any()):
            raise ValueError(f"{name}[{int(bad.nonzero()[0, 0])}]: expected x2 >= x1 and y2 >= y1, "
                             f"got {b[bad][0].tolist()}")
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
    """
    _check_pair(rects1, rects2, ("rects1", "rects2"))
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
    """Euclidean distance in px between box centres ``x + (w - 1) / 2`` -> ``(N,)``."""
    _check_pair(pred_xywh, gt_xywh, ("pred_xywh", "gt_xywh"))
    d = _centers(pred_xywh.to(torch.float64)) - _centers(gt_xywh.to(torch.float64))
    return _norm(d)


def normalized_center_error(pred_xywh: Tensor, gt_xywh: Tensor) -> Tensor:
    """Centre offset divided per axis by the ground-truth size (at least 1 px) -> ``(N,)``."""
    _check_pair(pred_xywh, gt_xywh, ("pred_xywh", "gt_xywh"))
    gt = gt_xywh.to(torch.float64)
    d = (_centers(pred_xywh.to(torch.float64)) - _centers(gt)) / gt[:, 2:].clamp(min=1.0)
    return _norm(d)


def success_curve(pred_xywh: Tensor, gt_xywh: Tensor) -> Tensor:
    """OTB/LaSOT success plot: fraction of frames with ``IoU > thr``, thr = linspace(0, 1, 21).

    ``pred_xywh (N, 4)``, ``gt_xywh (N, 4)`` -> ``(21,)`` float64. Its mean is the AUC.
    """
    iou = rect_iou(pred_xywh, gt_xywh)
    return (iou[:, None] > SUCCESS_THRESHOLDS).to(torch.float64).mean(0)


def precision_curve(pred_xywh: Tensor, gt_xywh: Tensor) -> Tensor:
    """Precision plot: fraction of frames with centre error ``<= thr`` px, thr = 0..50 -> ``(51,)``.

    Index 20 is the usual "precision at 20 px".
    """
    err = center_error(pred_xywh, gt_xywh)
    return (err[:, None] <= PRECISION_THRESHOLDS).to(torch.float64).mean(0)


def normalized_precision_curve(pred_xywh: Tensor, gt_xywh: Tensor) -> Tensor:
    """LaSOT normalised precision plot, thr = linspace(0, 0.5, 51) -> ``(51,)``; its mean is the
    score the GOT-10k toolkit reports for LaSOT."""
    err = normalized_center_error(pred_xywh, gt_xywh)
    return (err[:, None] <= NORM_PRECISION_THRESHOLDS).to(torch.float64).mean(0)

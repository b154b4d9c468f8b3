"""Moment retrieval and highlight detection, vectorised over queries.

Conventions follow Moment-DETR's ``standalone_eval`` (QVHighlights):

- mAP: per query, predictions ranked by score (ties keep their listed order) are matched
  greedily to the ground-truth window of highest IoU that is still free and has
  ``IoU >= threshold`` (ties between windows go to the later-listed window); the AP is the
  VOC interpolated area under the precision/recall curve (ActivityNet detection AP).
- R1: the *first listed* prediction against the ground-truth window of highest IoU with it;
  a hit when ``IoU >= threshold``. IoU there is intersection over the hull of both windows,
  which equals the usual IoU whenever they overlap (and is 0 otherwise).
- Highlight AP: per query and annotator, the average of the interpolated precision at every
  distinct score threshold that recalls a new positive clip (scikit-learn curve semantics);
  all-positive labels give 1, all-negative 0. Hit@1: the label of the top-scored clip.

Padded layouts: ``(Q, N, ...)`` tensors with a ``(Q, N)`` bool mask of real entries. The work
is many small array operations, done in NumPy float64 (single-threaded: intra-op threads only
add contention at these sizes); inputs and outputs are torch tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from tpo.metrics._validate import first_bad
from tpo.ops import spans as _spans

__all__ = [
    "MAP_IOU_THRESHOLDS",
    "pad_windows",
    "temporal_iou",
    "cross_temporal_iou",
    "moment_average_precision",
    "moment_top1_iou",
    "highlight_average_precision",
    "highlight_hit_at_one",
]

#: tIoU thresholds 0.5:0.05:0.95 as Python floats (0.55, not 0.5500000000000002).
MAP_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def pad_windows(
    windows: Sequence[Tensor], width: int, name: str
) -> tuple[Tensor, Tensor]:
    """Stack per-query ``(n_i, width)`` float tensors into ``(Q, N, width)`` plus a ``(Q, N)`` mask.

    Raises ``ValueError`` naming ``name[i]`` when an entry is not a ``(n, width)`` tensor or
    holds a NaN / infinite value.
    """
    for i, w in enumerate(windows):
        if not isinstance(w, Tensor):
            raise ValueError(f"{name}[{i}]: expected a (n, {width}) tensor, got {type(w).__name__}")
        if w.ndim != 2 or w.shape[1] != width:
            raise ValueError(f"{name}[{i}]: expected shape (n, {width}), got {tuple(w.shape)}")
    q = len(windows)
    n = max((w.shape[0] for w in windows), default=0)
    out = torch.zeros(q, n, width, dtype=torch.float64)
    mask = torch.zeros(q, n, dtype=torch.bool)
    for i, w in enumerate(windows):
        out[i, : w.shape[0]] = w.to(torch.float64)
        mask[i, : w.shape[0]] = True
    bad = first_bad(~torch.isfinite(out).all(-1))
    if bad is not None:
        raise ValueError(f"{name}[{bad[0]}]: row {bad[1]} is {out[bad].tolist()}; "
                         "expected finite values")
    return out, mask


def _np(x: Tensor, dtype: type = np.float64) -> np.ndarray:
    return x.detach().cpu().numpy().astype(dtype, copy=False)


def _fail(name: str, expected: str, x: Tensor) -> None:
    raise ValueError(f"{name}: expected {expected}, got shape {tuple(x.shape)}")


def _check_windows(name: str, windows: Tensor, mask: Tensor | None, queries: int | None,
                   like: str = "pred") -> None:
    """``windows (Q, N, 2)`` (start, end), optional ``mask (Q, N)``: shapes, finite values and
    ``start <= end`` where the mask is True; ``ValueError`` naming ``name[q, n]``."""
    if windows.ndim != 3 or windows.shape[-1] != 2:
        _fail(name, "(Q, N, 2) (start, end) windows", windows)
    if queries is not None and windows.shape[0] != queries:
        raise ValueError(f"{name}: expected {queries} queries like {like}, got shape "
                         f"{tuple(windows.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(windows.shape[:2]):
        raise ValueError(f"{name}_mask: expected shape {tuple(windows.shape[:2])} like {name}, "
                         f"got {tuple(mask.shape)}")
    w = _np(windows)
    m = np.ones(w.shape[:2], dtype=bool) if mask is None else _np(mask, bool)
    bad = first_bad(m & ~np.isfinite(w).all(-1))
    if bad is not None:
        raise ValueError(f"{name}[{bad[0]}, {bad[1]}]: window {w[bad].tolist()} is not finite")
    bad = first_bad(m & (w[..., 0] > w[..., 1]))
    if bad is not None:
        raise ValueError(f"{name}[{bad[0]}, {bad[1]}]: window {w[bad].tolist()} has start > end")


def _check_scores(name: str, scores: Tensor, mask: Tensor, mask_name: str) -> None:
    """``scores`` shaped like ``mask`` and finite where it is True."""
    if tuple(scores.shape) != tuple(mask.shape):
        raise ValueError(f"{name}: expected shape {tuple(mask.shape)} like {mask_name}, "
                         f"got {tuple(scores.shape)}")
    bad = first_bad(_np(mask, bool) & ~np.isfinite(_np(scores)))
    if bad is not None:
        raise ValueError(f"{name}{list(bad)}: score {float(_np(scores)[bad])} is not finite")


def _check_labels(labels: Tensor, mask: Tensor, queries: int) -> None:
    if labels.ndim != 3 or labels.shape[0] != queries:
        _fail("labels", f"({queries}, C, A) bool per clip and annotator", labels)
    if tuple(mask.shape) != tuple(labels.shape[:2]):
        raise ValueError(f"mask: expected shape {tuple(labels.shape[:2])} like labels, "
                         f"got {tuple(mask.shape)}")


def temporal_iou(spans_a: Tensor, spans_b: Tensor) -> Tensor:
    """Pairwise temporal IoU of ``(N, 2)`` and ``(M, 2)`` (start, end) spans -> ``(N, M)``
    (:func:`tpo.ops.spans.temporal_iou`, after checking the spans: finite, ``start <= end``).

    A pair whose union is empty (two zero-length spans) has IoU 0.
    """
    for name, spans in (("spans_a", spans_a), ("spans_b", spans_b)):
        if spans.ndim != 2 or spans.shape[-1] != 2:
            _fail(name, "(N, 2) spans as (start, end)", spans)
        w = _np(spans)
        for bad, why in ((~np.isfinite(w).all(-1), "is not finite"), (w[:, 0] > w[:, 1],
                                                                     "has start > end")):
            row = first_bad(bad)
            if row is not None:
                raise ValueError(f"{name}[{row[0]}]: span {w[row[0]].tolist()} {why}")
    return _spans.temporal_iou(spans_a, spans_b)


def _iou_np(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    inter = np.minimum(pred[:, :, None, 1], gt[:, None, :, 1]) - np.maximum(
        pred[:, :, None, 0], gt[:, None, :, 0])
    np.maximum(inter, 0, out=inter)
    union = (pred[:, :, None, 1] - pred[:, :, None, 0]) + (gt[:, None, :, 1] - gt[:, None, :, 0])
    union -= inter
    pos = union > 0
    return np.where(pos, inter / np.where(pos, union, 1.0), 0.0)


def cross_temporal_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """Batched pairwise IoU, ``pred (Q, P, 2)`` x ``gt (Q, G, 2)`` (start, end) -> ``(Q, P, G)``.

    ``intersection / (len_a + len_b - intersection)``; an empty union gives 0. ``ValueError``
    when the shapes disagree, a window is NaN / infinite or has ``start > end``.
    """
    _check_windows("pred", pred, None, None)
    _check_windows("gt", gt, None, pred.shape[0])
    return torch.from_numpy(_iou_np(_np(pred), _np(gt)))


def _rank(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Stable descending order of ``scores`` per row, padding last."""
    order = np.argsort(-scores, axis=1, kind="stable")
    pad_last = np.argsort(~np.take_along_axis(mask, order, 1), axis=1, kind="stable")
    return np.take_along_axis(order, pad_last, 1)


def moment_average_precision(
    pred: Tensor,
    scores: Tensor,
    pred_mask: Tensor,
    gt: Tensor,
    gt_mask: Tensor,
    thresholds: Sequence[float] = MAP_IOU_THRESHOLDS,
) -> Tensor:
    """Detection AP of each query at each tIoU threshold (ActivityNet / Moment-DETR semantics).

    Args:
        pred: ``(Q, P, 2)`` predicted (start, end).
        scores: ``(Q, P)`` confidence; higher ranks first, ties keep the listed order.
        pred_mask: ``(Q, P)`` bool, real predictions.
        gt: ``(Q, G, 2)`` ground-truth (start, end).
        gt_mask: ``(Q, G)`` bool, real windows; every query needs at least one.

    Returns:
        ``(Q, K)`` float64 AP in [0, 1] for the ``K`` thresholds; 0 for a query without
        predictions.

    Raises:
        ValueError: shapes that disagree, NaN / infinite windows or scores, ``start > end``.
    """
    _check_windows("pred", pred, pred_mask, None)
    _check_scores("scores", scores, pred_mask, "pred_mask")
    _check_windows("gt", gt, gt_mask, pred.shape[0])
    pm, gm = _np(pred_mask, bool), _np(gt_mask, bool)
    q, p = pm.shape
    thr = np.asarray(thresholds, dtype=np.float64)
    k_n = len(thr)
    if q == 0:
        return torch.zeros(0, k_n, dtype=torch.float64)
    n_gt = gm.sum(-1).astype(np.float64)
    if (n_gt == 0).any():
        raise ValueError("moment_average_precision: every query needs a ground-truth window")
    order = _rank(np.where(pm, _np(scores), -np.inf), pm)
    windows = np.take_along_axis(_np(pred), order[..., None], 1)
    valid = np.take_along_axis(pm, order, 1)
    # windows in reverse listed order: argmax (first maximum) then picks, among equal IoUs,
    # the later-listed window, as the official reverse argsort does
    iou = np.where(gm[:, None, ::-1], _iou_np(windows, _np(gt)[:, ::-1]), -1.0)  # (Q, P, G)
    over = iou[:, :, None, :] >= thr[None, None, :, None]  # (Q, P, K, G)
    locked = np.zeros((q, k_n, iou.shape[-1]), dtype=bool)
    tp = np.zeros((q, k_n, p), dtype=bool)
    rows = np.arange(q)[:, None]
    cols = np.arange(k_n)[None, :]
    for k in range(p):
        free = over[:, k] & ~locked  # (Q, K, G)
        pick = np.argmax(np.where(free, iou[:, k, None, :], -np.inf), axis=-1)  # (Q, K)
        hit = free.any(-1) & valid[:, k, None]
        tp[:, :, k] = hit
        locked[rows, cols, pick] |= hit
    fp = valid[:, None, :] & ~tp
    tp_cum = np.cumsum(tp, -1, dtype=np.float64)
    fp_cum = np.cumsum(fp, -1, dtype=np.float64)
    recall = tp_cum / n_gt[:, None, None]
    denom = tp_cum + fp_cum
    precision = np.where(denom > 0, tp_cum / np.where(denom > 0, denom, 1.0), 0.0)
    envelope = np.maximum.accumulate(precision[..., ::-1], axis=-1)[..., ::-1]
    d_recall = np.diff(recall, axis=-1, prepend=0.0)
    return torch.from_numpy((d_recall * envelope).sum(-1))


def moment_top1_iou(pred: Tensor, pred_mask: Tensor, gt: Tensor, gt_mask: Tensor) -> Tensor:
    """IoU of each query's first listed prediction with its best-matching ground truth.

    Args:
        pred: ``(Q, P, 2)``; only ``pred[:, 0]`` is used.
        pred_mask: ``(Q, P)``; a query with no prediction scores 0.
        gt: ``(Q, G, 2)``; gt_mask ``(Q, G)``.

    Returns:
        ``(Q,)`` float64: the window of highest IoU is chosen (first on ties), and the IoU
        reported is ``intersection / hull`` as Moment-DETR's R1 does.

    Raises:
        ValueError: shapes that disagree, NaN / infinite windows, ``start > end``.
    """
    _check_windows("pred", pred, pred_mask, None)
    _check_windows("gt", gt, gt_mask, pred.shape[0])
    q = pred.shape[0]
    if q == 0 or pred.shape[1] == 0:
        return torch.zeros(q, dtype=torch.float64)
    top = _np(pred)[:, :1]
    gts, gm = _np(gt), _np(gt_mask, bool)
    iou = np.where(gm, _iou_np(top, gts)[:, 0], -1.0)
    best = np.take_along_axis(gts, np.argmax(iou, -1)[:, None, None], 1)[:, 0]
    top = top[:, 0]
    inter = np.maximum(np.minimum(top[:, 1], best[:, 1]) - np.maximum(top[:, 0], best[:, 0]), 0)
    hull = np.maximum(top[:, 1], best[:, 1]) - np.minimum(top[:, 0], best[:, 0])
    out = np.where(hull != 0, inter / np.where(hull != 0, hull, 1.0), 0.0)
    return torch.from_numpy(np.where(_np(pred_mask, bool)[:, 0] & gm.any(-1), out, 0.0))


def highlight_average_precision(scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Per-query, per-annotator highlight AP (Moment-DETR ``get_ap`` with scikit-learn curves).

    Args:
        scores: ``(Q, C)`` predicted saliency per clip, already cut or zero-padded to the
            query's clip count.
        labels: ``(Q, C, A)`` bool, clip is a highlight for annotator ``a``.
        mask: ``(Q, C)`` bool, real clips.

    Returns:
        ``(Q, A)`` float64 AP in [0, 1].

    Raises:
        ValueError: shapes that disagree, NaN / infinite scores of real clips.
    """
    if scores.ndim != 2:
        _fail("scores", "(Q, C) saliency per clip", scores)
    _check_labels(labels, mask, scores.shape[0])
    _check_scores("scores", scores, mask, "mask")
    q, c, a = labels.shape
    if q == 0:
        return torch.zeros(0, a, dtype=torch.float64)
    m = _np(mask, bool)
    s = np.where(m, _np(scores), -np.inf)
    order = _rank(s, m)
    s = np.take_along_axis(s, order, 1)
    valid = np.take_along_axis(m, order, 1)
    y = np.take_along_axis(_np(labels, bool), order[..., None], 1) & valid[..., None]
    nxt_same = np.zeros_like(valid)
    nxt_same[:, :-1] = (s[:, 1:] == s[:, :-1]) & valid[:, 1:]
    group_end = (valid & ~nxt_same)[..., None]  # last position of each distinct score
    tps = np.cumsum(y, 1, dtype=np.float64)  # (Q, C, A)
    rank = np.arange(1, c + 1, dtype=np.float64)[None, :, None]
    precision = np.where(group_end, tps / rank, 0.0)
    prev = np.maximum.accumulate(np.where(group_end, tps, 0.0), axis=1)
    prev = np.concatenate([np.zeros((q, 1, a)), prev[:, :-1]], 1)
    counted = group_end & (tps > prev)
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    n = counted.sum(1)
    ap = np.where(counted, envelope, 0.0).sum(1) / np.maximum(n, 1)
    n_pos = y.sum(1)
    ap = np.where(n_pos == valid.sum(1, keepdims=True), 1.0, ap)
    return torch.from_numpy(np.where(n_pos == 0, 0.0, ap))


def highlight_hit_at_one(
    scores: Tensor, score_mask: Tensor, labels: Tensor, mask: Tensor
) -> Tensor:
    """Label of the top-scored clip, per annotator.

    Args:
        scores: ``(Q, S)`` predicted saliency as submitted (any length).
        score_mask: ``(Q, S)`` bool, real scores.
        labels: ``(Q, C, A)`` bool; mask ``(Q, C)`` real clips.

    Returns:
        ``(Q, A)`` bool: ``labels[argmax(scores)]`` (first maximum), False when the top clip
        lies beyond the video's clips or the query has no scores.

    Raises:
        ValueError: shapes that disagree, NaN / infinite real scores.
    """
    if scores.ndim != 2:
        _fail("scores", "(Q, S) saliency", scores)
    _check_scores("scores", scores, score_mask, "score_mask")
    _check_labels(labels, mask, scores.shape[0])
    q, c, a = labels.shape
    if q == 0 or scores.shape[1] == 0 or c == 0:
        return torch.zeros(q, a, dtype=torch.bool)
    sm = _np(score_mask, bool)
    top = np.argmax(np.where(sm, _np(scores), -np.inf), 1)
    inside = (top < _np(mask, bool).sum(1)) & sm.any(1)
    idx = np.minimum(top, c - 1)
    hit = np.take_along_axis(_np(labels, bool), idx[:, None, None], 1)[:, 0]
    return torch.from_numpy(hit & inside[:, None])

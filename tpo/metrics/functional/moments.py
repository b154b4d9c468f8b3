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

Padded layouts: ``(Q, N, ...)`` tensors with a ``(Q, N)`` bool mask of real entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "MAP_IOU_THRESHOLDS",
    "pad_windows",
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

    Raises ``ValueError`` naming ``name[i]`` when an entry is not ``(n, width)``.
    """
    for i, w in enumerate(windows):
        if w.ndim != 2 or w.shape[1] != width:
            raise ValueError(f"{name}[{i}]: expected shape (n, {width}), got {tuple(w.shape)}")
    q = len(windows)
    n = max((w.shape[0] for w in windows), default=0)
    out = torch.zeros(q, n, width, dtype=torch.float64)
    mask = torch.zeros(q, n, dtype=torch.bool)
    for i, w in enumerate(windows):
        out[i, : w.shape[0]] = w.to(torch.float64)
        mask[i, : w.shape[0]] = True
    return out, mask


def cross_temporal_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """Batched pairwise IoU, ``pred (Q, P, 2)`` x ``gt (Q, G, 2)`` (start, end) -> ``(Q, P, G)``.

    ``intersection / (len_a + len_b - intersection)``; an empty union gives 0.
    """
    inter = (
        torch.minimum(pred[:, :, None, 1], gt[:, None, :, 1])
        - torch.maximum(pred[:, :, None, 0], gt[:, None, :, 0])
    ).clamp(min=0)
    union = (pred[:, :, None, 1] - pred[:, :, None, 0]) + (gt[:, None, :, 1] - gt[:, None, :, 0])
    union = union - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, 1.0), 0.0)


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
    """
    q, p = pred_mask.shape
    thr = torch.tensor(thresholds, dtype=torch.float64)
    if q == 0:
        return torch.zeros(0, len(thr), dtype=torch.float64)
    n_gt = gt_mask.sum(-1).to(torch.float64)
    if bool((n_gt == 0).any()):
        raise ValueError("moment_average_precision: every query needs a ground-truth window")
    ranked = torch.where(pred_mask, scores.to(torch.float64), -torch.inf)
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    # Padding sorts last even against -inf scores: order real entries first, stably.
    order = torch.gather(order, 1, torch.sort((~pred_mask).gather(1, order).to(torch.int8),
                                             dim=1, stable=True).indices)
    pred = pred.gather(1, order[..., None].expand(-1, -1, 2))
    valid = pred_mask.gather(1, order)
    iou = cross_temporal_iou(pred, gt)  # (Q, P, G)
    iou = torch.where(gt_mask[:, None, :], iou, -1.0)
    g = gt.shape[1]
    locked = torch.zeros(q, len(thr), g, dtype=torch.bool)
    tp = torch.zeros(q, len(thr), p, dtype=torch.bool)
    for k in range(p):
        iou_k = iou[:, k, None, :]  # (Q, 1, G)
        free = (iou_k >= thr[None, :, None]) & ~locked  # (Q, K, G)
        cand = torch.where(free, iou_k, -torch.inf)
        # the highest IoU wins; among equal IoUs the later-listed window (reverse argsort)
        pick = g - 1 - cand.flip(-1).argmax(-1)  # (Q, K)
        hit = free.any(-1) & valid[:, k, None]
        tp[:, :, k] = hit
        locked.scatter_(2, pick[..., None], hit[..., None] | locked.gather(2, pick[..., None]))
    fp = valid[:, None, :] & ~tp
    tp_cum = tp.to(torch.float64).cumsum(-1)
    fp_cum = fp.to(torch.float64).cumsum(-1)
    recall = tp_cum / n_gt[:, None, None]
    denom = tp_cum + fp_cum
    precision = torch.where(denom > 0, tp_cum / torch.where(denom > 0, denom, 1.0), 0.0)
    envelope = precision.flip(-1).cummax(-1).values.flip(-1)
    d_recall = torch.diff(recall, dim=-1, prepend=torch.zeros(q, len(thr), 1, dtype=torch.float64))
    return (d_recall * envelope).sum(-1)


def moment_top1_iou(pred: Tensor, pred_mask: Tensor, gt: Tensor, gt_mask: Tensor) -> Tensor:
    """IoU of each query's first listed prediction with its best-matching ground truth.

    Args:
        pred: ``(Q, P, 2)``; only ``pred[:, 0]`` is used.
        pred_mask: ``(Q, P)``; a query with no prediction scores 0.
        gt: ``(Q, G, 2)``; gt_mask ``(Q, G)``.

    Returns:
        ``(Q,)`` float64: the window of highest IoU is chosen (first on ties), and the IoU
        reported is ``intersection / hull`` as Moment-DETR's R1 does.
    """
    q = pred.shape[0]
    if q == 0 or pred.shape[1] == 0:
        return torch.zeros(q, dtype=torch.float64)
    top = pred[:, :1]
    iou = torch.where(gt_mask, cross_temporal_iou(top, gt)[:, 0], -1.0)
    best = gt.gather(1, iou.argmax(-1)[:, None, None].expand(-1, 1, 2))[:, 0]
    top = top[:, 0]
    inter = torch.minimum(top[:, 1], best[:, 1]) - torch.maximum(top[:, 0], best[:, 0])
    inter = inter.clamp(min=0)
    hull = torch.maximum(top[:, 1], best[:, 1]) - torch.minimum(top[:, 0], best[:, 0])
    out = torch.where(hull != 0, inter / torch.where(hull != 0, hull, 1.0), 0.0)
    return torch.where(pred_mask[:, 0] & gt_mask.any(-1), out, 0.0)


def highlight_average_precision(scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Per-query, per-annotator highlight AP (Moment-DETR ``get_ap`` with scikit-learn curves).

    Args:
        scores: ``(Q, C)`` predicted saliency per clip, already cut or zero-padded to the
            query's clip count.
        labels: ``(Q, C, A)`` bool, clip is a highlight for annotator ``a``.
        mask: ``(Q, C)`` bool, real clips.

    Returns:
        ``(Q, A)`` float64 AP in [0, 1].
    """
    q, c, a = labels.shape
    if q == 0:
        return torch.zeros(0, a, dtype=torch.float64)
    s = torch.where(mask, scores.to(torch.float64), -torch.inf)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    order = torch.gather(order, 1, torch.sort((~mask).gather(1, order).to(torch.int8),
                                             dim=1, stable=True).indices)
    s = s.gather(1, order)
    valid = mask.gather(1, order)
    y = labels.gather(1, order[..., None].expand(-1, -1, a)) & valid[..., None]  # (Q, C, A)
    nxt_same = torch.zeros_like(valid)
    nxt_same[:, :-1] = (s[:, 1:] == s[:, :-1]) & valid[:, 1:]
    group_end = valid & ~nxt_same  # (Q, C): last position of each distinct score
    tps = y.to(torch.float64).cumsum(1)  # (Q, C, A)
    rank = torch.arange(1, c + 1, dtype=torch.float64)[None, :, None]
    precision = torch.where(group_end[..., None], tps / rank, 0.0)
    prev = torch.where(group_end[..., None], tps, 0.0).cummax(1).values
    prev = torch.cat([torch.zeros(q, 1, a, dtype=torch.float64), prev[:, :-1]], 1)
    counted = group_end[..., None] & (tps > prev)
    envelope = precision.flip(1).cummax(1).values.flip(1)
    n = counted.sum(1)
    ap = torch.where(counted, envelope, 0.0).sum(1) / n.clamp(min=1)
    n_pos = y.sum(1)
    n_clips = valid.sum(1, keepdim=True)
    ap = torch.where(n_pos == n_clips, 1.0, ap)
    return torch.where(n_pos == 0, 0.0, ap)


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
    """
    q, c, a = labels.shape
    if q == 0 or scores.shape[1] == 0:
        return torch.zeros(q, a, dtype=torch.bool)
    top = torch.where(score_mask, scores.to(torch.float64), -torch.inf).argmax(1)  # (Q,)
    inside = (top < mask.sum(1)) & score_mask.any(1)
    idx = top.clamp(max=max(c - 1, 0))
    if c == 0:
        return torch.zeros(q, a, dtype=torch.bool)
    hit = labels.gather(1, idx[:, None, None].expand(-1, 1, a))[:, 0]
    return hit & inside[:, None]

"""Temporal span algebra.

Spans are either ``se`` — ``(start, end)`` — or ``cxw`` — ``(center, width)``; the unit is
whatever the caller uses (normalised clip fraction inside heads, seconds at the API boundary).
All functions are differentiable where that makes sense and work on any leading batch shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "span_cxw_to_se",
    "span_se_to_cxw",
    "temporal_iou",
    "temporal_intersection_union",
    "generalized_temporal_iou",
]


def span_cxw_to_se(spans: Tensor) -> Tensor:
    """``(..., 2)`` (center, width) -> ``(..., 2)`` (start, end)."""
    center, width = spans.unbind(-1)
    return torch.stack((center - 0.5 * width, center + 0.5 * width), dim=-1)


def span_se_to_cxw(spans: Tensor) -> Tensor:
    """``(..., 2)`` (start, end) -> ``(..., 2)`` (center, width)."""
    start, end = spans.unbind(-1)
    return torch.stack((0.5 * (start + end), end - start), dim=-1)


def _check_se(spans: Tensor, name: str) -> None:
    if spans.ndim != 2 or spans.shape[-1] != 2:
        raise ValueError(
            f"{name}: expected (N, 2) spans as (start, end), got shape {tuple(spans.shape)}"
        )


def temporal_intersection_union(spans_a: Tensor, spans_b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise intersection and union lengths.

    Args:
        spans_a: ``(N, 2)`` (start, end).
        spans_b: ``(M, 2)`` (start, end).

    Returns:
        ``(N, M)`` intersection lengths and ``(N, M)`` union lengths.
    """
    _check_se(spans_a, "spans_a")
    _check_se(spans_b, "spans_b")
    start = torch.maximum(spans_a[:, None, 0], spans_b[None, :, 0])
    end = torch.minimum(spans_a[:, None, 1], spans_b[None, :, 1])
    inter = (end - start).clamp(min=0)
    len_a = spans_a[:, 1] - spans_a[:, 0]
    len_b = spans_b[:, 1] - spans_b[:, 0]
    union = len_a[:, None] + len_b[None, :] - inter
    return inter, union


def temporal_iou(spans_a: Tensor, spans_b: Tensor) -> Tensor:
    """Pairwise temporal IoU of ``(N, 2)`` and ``(M, 2)`` (start, end) spans -> ``(N, M)``.

    A pair whose union is empty (two zero-length spans) has IoU 0.
    """
    inter, union = temporal_intersection_union(spans_a, spans_b)
    positive = union > 0
    return torch.where(positive, inter / torch.where(positive, union, 1.0), 0.0)


def generalized_temporal_iou(spans_a: Tensor, spans_b: Tensor) -> Tensor:
    """Pairwise generalized temporal IoU (GIoU, Rezatofighi et al. 2019, in 1-D) -> ``(N, M)``.

    ``giou = iou - (hull - union) / hull`` where ``hull`` is the length of the smallest span
    enclosing both. In ``[-1, 1]``. Spans are ``(start, end)`` with ``end >= start``.
    """
    inter, union = temporal_intersection_union(spans_a, spans_b)
    iou = inter / union.clamp(min=1e-9)
    hull_start = torch.minimum(spans_a[:, None, 0], spans_b[None, :, 0])
    hull_end = torch.maximum(spans_a[:, None, 1], spans_b[None, :, 1])
    hull = (hull_end - hull_start).clamp(min=1e-9)
    return iou - (hull - union) / hull


__all__ += ["temporal_nms", "check_normalized_spans", "clip_centers"]


def clip_centers(valid: Tensor) -> Tensor:
    """Normalised center of each valid clip: ``valid (..., T)`` bool -> ``(..., T)`` float, the
    ``k``-th valid clip of ``L`` at ``(k + 0.5) / L`` (padded clips get their predecessor's)."""
    valid = valid.float()
    return (valid.cumsum(-1) - 0.5) / valid.sum(-1, keepdim=True).clamp(min=1)


def temporal_nms(spans: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression of 1-D spans.

    Args:
        spans: ``(N, 2)`` (start, end).
        scores: ``(N,)`` higher is better.
        iou_threshold: a span is dropped when its temporal IoU with a kept, higher-scoring
            span exceeds this.

    Returns:
        ``(K,)`` int64 indices of the kept spans, by decreasing score.
    """
    _check_se(spans, "spans")
    if scores.shape != spans.shape[:1]:
        raise ValueError(f"scores: expected shape ({spans.shape[0]},), got {tuple(scores.shape)}")
    order = scores.argsort(descending=True, stable=True)
    iou = temporal_iou(spans[order], spans[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=spans.device)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.int64, device=spans.device)


def check_normalized_spans(spans: Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``spans (n, 2)`` are normalised (center, width) in [0, 1].

    The message names ``name`` (e.g. ``"targets[3]['spans']"``) and the offending row; a span
    whose start exceeds its end (negative width) or that leaves [0, 1] is rejected.
    """
    if spans.ndim != 2 or spans.shape[-1] != 2:
        raise ValueError(f"{name}: expected (n, 2) (center, width) spans, got {tuple(spans.shape)}")
    se = span_cxw_to_se(spans.detach().float())
    tol = 1e-4
    for row, (start, end) in enumerate(se.tolist()):
        if not (start <= end):
            raise ValueError(f"{name}: span {row} has start {start:.4g} > end {end:.4g}")
        if start < -tol or end > 1 + tol:
            raise ValueError(
                f"{name}: span {row} ({start:.4g}, {end:.4g}) lies outside [0, 1] of the clip"
            )

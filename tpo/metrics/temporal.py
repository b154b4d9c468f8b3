"""Moment retrieval and highlight detection as ``torchmetrics.Metric`` classes."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from tpo.metrics._validate import SaliencyLengthWarning, check_sequence_arg, empty_result
from tpo.metrics.functional.moments import (
    MAP_IOU_THRESHOLDS,
    highlight_average_precision,
    highlight_hit_at_one,
    moment_average_precision,
    moment_top1_iou,
    pad_windows,
)
from tpo.metrics.qvhighlights import HIGHLIGHT_LEVELS

__all__ = ["MomentRetrieval", "HighlightDetection"]


class MomentRetrieval(Metric):
    """R1@IoU, mIoU and mAP over tIoU 0.5:0.05:0.95 for moment retrieval / temporal grounding.

    Matches Moment-DETR's ``standalone_eval`` (QVHighlights) per query: R1 scores the *first
    listed* window against the ground-truth window of highest IoU with it (hit when
    ``IoU >= thr``); mAP keeps the first ``max_windows`` windows, ranks them by score and
    matches greedily (ActivityNet detection AP, VOC interpolation). With one annotated window
    per query and thresholds (0.3, 0.5, 0.7) it is the usual Charades-STA / ActivityNet
    Captions protocol. Values are fractions in [0, 1] (the file evaluator prints percent).

    ``length_buckets`` (e.g. :data:`tpo.metrics.QVHIGHLIGHTS_LENGTH_BUCKETS`) adds per-bucket
    mAP/R1/mIoU over queries that have a ground-truth window of length in ``(low, high]``
    seconds, scored against those windows only. A query without predictions scores 0 (the
    official script drops it from mAP and crashes in R1). A bucket that holds no query scores 0,
    as in the official script; a metric that holds no query at all returns NaN everywhere with
    an :class:`~tpo.metrics.EmptyMetricWarning`.

    Raises ``ValueError`` naming ``preds[i]`` / ``target[i]`` for a wrong shape, a NaN or
    infinite number, or a window with start > end.

    ``update(preds, target)``:
        preds: list of ``(P_i, 3)`` (start, end, score) or ``(P_i, 2)`` windows (then the
            listed order is the ranking), one entry per query.
        target: list of ``(G_i, 2)`` (start, end) windows, ``G_i >= 1``.

    ``compute()`` keys: ``mAP``, ``mAP@0.5``, ``mAP@0.75``, ``R1@<thr>``, ``mIoU``, and the
    same prefixed ``<bucket>-`` per length bucket.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        *,
        r1_thresholds: Sequence[float] = (0.5, 0.7),
        map_thresholds: Sequence[float] = MAP_IOU_THRESHOLDS,
        max_windows: int = 10,
        length_buckets: Mapping[str, tuple[float, float]] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        self.r1_thresholds = tuple(float(t) for t in r1_thresholds)
        self.map_thresholds = tuple(float(t) for t in map_thresholds)
        self.max_windows = max_windows
        self.buckets: dict[str, tuple[float, float] | None] = {"full": None}
        self.buckets.update(dict(length_buckets or {}))
        b = len(self.buckets)
        self.add_state("ap_sum", torch.zeros(b, len(self.map_thresholds), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("r1_hits", torch.zeros(b, len(self.r1_thresholds), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("iou_sum", torch.zeros(b, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(b, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Sequence[Tensor], target: Sequence[Tensor]) -> None:
        check_sequence_arg(preds, "preds", "(P, 3) (start, end, score) windows")
        check_sequence_arg(target, "target", "(G, 2) (start, end) windows")
        if len(preds) != len(target):
            raise ValueError(f"preds has {len(preds)} queries but target has {len(target)}")
        preds = [p.detach().cpu() for p in preds]
        target = [t.detach().cpu() for t in target]
        for i, p in enumerate(preds):
            if p.ndim != 2 or p.shape[1] not in (2, 3):
                raise ValueError(f"preds[{i}]: expected (P, 2) or (P, 3), got {tuple(p.shape)}")
            if p.shape[1] == 2:
                rank = -torch.arange(p.shape[0], dtype=p.dtype)[:, None]
                preds[i] = torch.cat([p, rank], 1)
            preds[i] = preds[i][: self.max_windows]
        pred, pmask = pad_windows(preds, 3, "preds")
        gt, gmask = pad_windows(target, 2, "target")
        for name, w, m in (("preds", pred, pmask), ("target", gt, gmask)):
            bad = (m & (w[..., 0] > w[..., 1])).any(-1)
            if bool(bad.any()):
                raise ValueError(f"{name}[{int(bad.nonzero()[0, 0])}]: window with start > end")
        empty = ~gmask.any(-1)
        if bool(empty.any()):
            raise ValueError(f"target[{int(empty.nonzero()[0, 0])}]: no ground-truth window")
        length = gt[..., 1] - gt[..., 0]
        r1_thr = torch.tensor(self.r1_thresholds, dtype=torch.float64)
        for b, bounds in enumerate(self.buckets.values()):
            gm = gmask if bounds is None else gmask & (length > bounds[0]) & (length <= bounds[1])
            keep = gm.any(-1)
            p, pm, g, gm = pred[keep], pmask[keep], gt[keep], gm[keep]
            ap = moment_average_precision(p[..., :2], p[..., 2], pm, g, gm, self.map_thresholds)
            iou = moment_top1_iou(p[..., :2], pm, g, gm)
            self.ap_sum[b] += ap.sum(0).to(self.ap_sum)
            self.r1_hits[b] += (iou[:, None] >= r1_thr).sum(0).to(self.r1_hits)
            self.iou_sum[b] += iou.sum().to(self.iou_sum)
            self.count[b] += keep.sum().to(self.count)

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        empty = bool(self.count[0] == 0)
        for b, name in enumerate(self.buckets):
            n = self.count[b].clamp(min=1)
            prefix = "" if name == "full" else f"{name}-"
            ap = self.ap_sum[b] / n
            out[f"{prefix}mAP"] = ap.mean()
            for t, v in zip(self.map_thresholds, ap, strict=True):
                if t in (0.5, 0.75):
                    out[f"{prefix}mAP@{t}"] = v
            for t, v in zip(self.r1_thresholds, self.r1_hits[b] / n, strict=True):
                out[f"{prefix}R1@{t}"] = v
            out[f"{prefix}mIoU"] = self.iou_sum[b] / n
        return empty_result(self, out, "queries") if empty else out


class HighlightDetection(Metric):
    """QVHighlights highlight detection: HIT@1 and mAP at the Fair / Good / VeryGood levels.

    Matches Moment-DETR's ``standalone_eval``: a clip (2 s) is positive for an annotator when
    their score is ``>= 2 / 3 / 4``; mAP averages, over queries and the three annotators, the
    per-video AP of the predicted saliency (scikit-learn precision/recall, interpolated; the
    prediction is cut or zero-padded to the video's clips); HIT@1 takes the clip with the
    highest predicted score (first on ties) and counts a hit when any annotator marks it
    positive. Values are fractions in [0, 1]. A prediction of another length than the video's
    clips is cut or zero-padded as the official code does, with a
    :class:`~tpo.metrics.SaliencyLengthWarning` naming ``preds[i]``; NaN / infinite scores raise
    ``ValueError``. A metric that holds no query returns NaN everywhere with an
    :class:`~tpo.metrics.EmptyMetricWarning`.

    ``update(preds, target)``:
        preds: list of ``(S_i,)`` predicted saliency per clip.
        target: list of ``(C_i, A)`` annotator scores 0..4 for *every* clip of the video
            (zeros outside the relevant clips), ``A`` annotators (3 in QVHighlights).

    ``compute()`` keys: ``<level>-mAP`` and ``<level>-Hit1`` for Fair, Good, VeryGood.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, *, levels: Mapping[str, int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.levels = dict(HIGHLIGHT_LEVELS if levels is None else levels)
        n = len(self.levels)
        self.add_state("ap_sum", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hit_sum", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Sequence[Tensor], target: Sequence[Tensor]) -> None:
        check_sequence_arg(preds, "preds", "(S,) saliency scores")
        check_sequence_arg(target, "target", "(C, A) annotator scores")
        if len(preds) != len(target):
            raise ValueError(f"preds has {len(preds)} queries but target has {len(target)}")
        if not preds:
            return
        preds = [p.detach().cpu() for p in preds]
        target = [t.detach().cpu() for t in target]
        for i, p in enumerate(preds):
            if p.ndim != 1:
                raise ValueError(f"preds[{i}]: expected (S,) saliency, got {tuple(p.shape)}")
        raw, raw_mask = pad_windows([p[:, None] for p in preds], 1, "preds")
        raw = raw[..., 0]
        a = target[0].shape[-1] if target[0].ndim == 2 else -1
        for i, t in enumerate(target):
            if t.ndim != 2 or t.shape[1] != a:
                raise ValueError(f"target[{i}]: expected (C, {max(a, 1)}) annotator scores, "
                                 f"got {tuple(t.shape)}")
        flat, cmask = pad_windows([t.reshape(t.shape[0], -1) for t in target], a, "target")
        wrong = [i for i, (p, t) in enumerate(zip(preds, target, strict=True))
                 if p.shape[0] != t.shape[0]]
        if wrong:
            i = wrong[0]
            more = f" (and {len(wrong) - 1} more: {wrong[1:6]})" if len(wrong) > 1 else ""
            warnings.warn(f"preds[{i}]: {preds[i].shape[0]} saliency scores for the "
                          f"{target[i].shape[0]} clips of target[{i}]{more}; cut or zero-padded "
                          "to the clip count, as Moment-DETR's standalone_eval does",
                          SaliencyLengthWarning, stacklevel=2)
        c = cmask.shape[1]
        aligned = torch.zeros(len(preds), c, dtype=torch.float64)
        w = min(c, raw.shape[1])
        aligned[:, :w] = torch.where(raw_mask[:, :w], raw[:, :w], 0.0)
        aligned = torch.where(cmask, aligned, 0.0)
        for k, level in enumerate(self.levels.values()):
            labels = (flat >= level) & cmask[..., None]
            ap = highlight_average_precision(aligned, labels, cmask)
            hit = highlight_hit_at_one(raw, raw_mask, labels, cmask)
            self.ap_sum[k] += ap.mean(1).sum().to(self.ap_sum)
            self.hit_sum[k] += hit.any(1).sum().to(self.hit_sum)
        self.count += len(preds)

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1)
        out = {}
        for k, name in enumerate(self.levels):
            out[f"{name}-mAP"] = self.ap_sum[k] / n
            out[f"{name}-Hit1"] = self.hit_sum[k] / n
        return empty_result(self, out, "queries") if bool(self.count == 0) else out

"""File-level evaluators: QVHighlights (Moment-DETR ``standalone_eval``) and Charades-STA.

Rows are the public jsonl dicts. Ground truth: ``qid, duration, relevant_windows
[[st, ed], ...]`` and, for highlights, ``relevant_clip_ids, saliency_scores [[a0, a1, a2], ...]``.
Submission: ``qid, pred_relevant_windows [[st, ed, score], ...]`` and/or
``pred_saliency_scores [s0, s1, ...]`` (one per 2-second clip).
"""

from __future__ import annotations

import gzip
import json
import math
import numbers
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpo.metrics._validate import SaliencyLengthWarning
from tpo.metrics.functional.moments import (
    MAP_IOU_THRESHOLDS,
    highlight_average_precision,
    highlight_hit_at_one,
    moment_average_precision,
    moment_top1_iou,
)

__all__ = [
    "QVHIGHLIGHTS_LENGTH_BUCKETS",
    "HIGHLIGHT_LEVELS",
    "load_jsonl",
    "evaluate_qvhighlights",
    "evaluate_charades_sta",
]

#: Ground-truth window length buckets in seconds, ``(low, high]``; "full" keeps everything.
QVHIGHLIGHTS_LENGTH_BUCKETS: dict[str, tuple[float, float]] = {
    "short": (0.0, 10.0),
    "middle": (10.0, 30.0),
    "long": (30.0, 150.0),
}
#: Saliency level name -> minimum annotator score (0..4) for a positive clip.
HIGHLIGHT_LEVELS: dict[str, int] = {"Fair": 2, "Good": 3, "VeryGood": 4}
CLIP_SECONDS = 2.0


def load_jsonl(path: str | Path) -> list[dict]:
    """Read a ``.jsonl`` or ``.jsonl.gz`` file into a list of dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such jsonl file")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({err})") from err
    return rows


def _pct(value: float) -> float:
    """Percent with two decimals, rounded as the official evaluator prints it."""
    return float(f"{100 * value:.2f}")


def _pack(rows: Sequence[Sequence[Sequence[float]]], width: int, qids: Sequence[Any],
          what: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-query lists of ``width``-long rows -> ``(Q, N, width)`` float64 and ``(Q, N)`` mask.

    Entries longer than ``width`` (e.g. a score after start, end) are cut.
    """
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    try:
        flat = np.asarray(list(chain.from_iterable(rows)), dtype=np.float64)
    except (ValueError, TypeError):
        flat = None
    if flat is None or (len(flat) and (flat.ndim != 2 or flat.shape[1] < width)):
        for qid, r in zip(qids, rows, strict=True):
            if any(not isinstance(w, (list, tuple)) or len(w) < width for w in r):
                raise ValueError(f"qid {qid}: {what} entries need at least {width} numbers, "
                                 f"got {r!r}")
        flat, lens = _flat([[w[:width] for w in r] for r in rows], what, qids)
    flat = flat.reshape(len(flat), -1) if len(flat) else np.zeros((0, width))
    return _scatter(flat[:, :width], lens)


def _check_windows(windows: np.ndarray, mask: np.ndarray, qids: Sequence[Any],
                   what: str) -> None:
    """Finite numbers and ``start <= end`` in every real row; ``ValueError`` naming the qid."""
    finite = np.isfinite(windows).all(-1)
    bad = np.argwhere(mask & ~finite)
    if len(bad):
        q, n = bad[0]
        raise ValueError(f"qid {qids[q]}: {what} has a non-finite entry {windows[q, n].tolist()}")
    bad = np.flatnonzero((mask & (windows[..., 0] > windows[..., 1])).any(-1))
    if len(bad):
        raise ValueError(f"qid {qids[bad[0]]}: {what} has a window with start > end")


def _field(rows: Sequence[Mapping], key: str, what: str) -> list:
    """``row[key]`` of every row; ``ValueError`` naming the first qid whose row lacks it."""
    for r in rows:
        if key not in r:
            raise ValueError(f"qid {r.get('qid')}: {what} row has no {key!r}")
    return [r[key] for r in rows]


def _index(rows: Sequence[dict], what: str) -> dict[Any, dict]:
    out: dict[Any, dict] = {}
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise ValueError(f"{what}[{i}]: expected a dict (one jsonl row), got {type(r).__name__}")
        if "qid" not in r:
            raise ValueError(f"{what}[{i}]: row has no 'qid'")
        if r["qid"] in out:
            raise ValueError(f"{what}: qid {r['qid']} appears twice")
        out[r["qid"]] = r
    return out


def _match(submission: Sequence[dict], ground_truth: Sequence[dict]) -> list[dict]:
    """Ground-truth rows in submission order; unknown or missing qids raise ``ValueError``."""
    gt = _index(ground_truth, "ground_truth")
    sub = _index(submission, "submission")
    unknown = [q for q in sub if q not in gt]
    if unknown:
        raise ValueError(f"submission has predictions for unknown qid(s) {unknown[:5]}")
    missing = [q for q in gt if q not in sub]
    if missing:
        raise ValueError(f"submission lacks qid(s) {missing[:5]} present in ground_truth")
    return [gt[r["qid"]] for r in submission]


def _moment_retrieval(submission: Sequence[dict], gts: Sequence[dict],
                      max_pred_windows: int) -> dict[str, dict]:
    qids = [r["qid"] for r in submission]
    for g in gts:
        if not g.get("relevant_windows"):
            raise ValueError(f"qid {g['qid']}: ground truth has no relevant_windows")
    windows = _field(submission, "pred_relevant_windows", "submission")
    pred, pmask = _pack([w[:max_pred_windows] for w in windows], 3, qids,
                        "pred_relevant_windows")
    gt, gmask = _pack([g["relevant_windows"] for g in gts], 2, qids, "relevant_windows")
    _check_windows(pred, pmask, qids, "pred_relevant_windows")
    _check_windows(gt, gmask, qids, "relevant_windows")
    length = gt[..., 1] - gt[..., 0]
    buckets = {**QVHIGHLIGHTS_LENGTH_BUCKETS, "full": None}
    out: dict[str, dict] = {}
    for name, bounds in buckets.items():
        if bounds is None:
            keep, gm = np.ones(len(qids), dtype=bool), gmask
        else:
            gm = gmask & (length > bounds[0]) & (length <= bounds[1])
            keep = gm.any(-1)
        p, pm, s = pred[keep, :, :2], pmask[keep], pred[keep, :, 2]
        g, gm = gt[keep], gm[keep]
        # the official evaluator averages AP only over queries that have predictions
        has_pred = pm.any(-1)
        ap = moment_average_precision(*(torch.from_numpy(x[has_pred]) for x in (p, s, pm, g, gm))
                                      ).numpy()
        ap_thds = ap.mean(0) if len(ap) else np.zeros(len(MAP_IOU_THRESHOLDS))
        mr_map = {str(t): _pct(v) for t, v in zip(MAP_IOU_THRESHOLDS, ap_thds, strict=True)}
        mr_map["average"] = _pct(np.mean(ap_thds))
        iou = moment_top1_iou(*(torch.from_numpy(x) for x in (p, pm, g, gm))).numpy()
        r1 = {str(t): _pct(np.mean(iou >= t)) if len(iou) else 0.0 for t in MAP_IOU_THRESHOLDS}
        out[name] = {"MR-mAP": mr_map, "MR-R1": r1}
    return out


def _flat(rows: Sequence[Sequence], what: str, qids: Sequence[Any]) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Concatenate per-query lists -> (flat float64 array, per-query lengths)."""
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    try:
        flat = np.asarray(list(chain.from_iterable(rows)), dtype=np.float64)
    except (ValueError, TypeError) as err:
        for qid, r in zip(qids, rows, strict=True):
            try:
                np.asarray(r, dtype=np.float64)
            except (ValueError, TypeError):
                raise ValueError(f"qid {qid}: malformed {what}: {r!r}") from err
        raise ValueError(f"{what}: entries of different lengths across queries") from err
    return flat, lens


def _scatter(flat: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(sum(lens), ...)`` values -> padded ``(Q, max(lens), ...)`` and ``(Q, N)`` mask."""
    n = int(lens.max(initial=0))
    q_idx = np.repeat(np.arange(len(lens)), lens)
    pos = np.arange(len(q_idx)) - np.repeat(np.cumsum(lens) - lens, lens)
    out = np.zeros((len(lens), n, *flat.shape[1:]))
    mask = np.zeros((len(lens), n), dtype=bool)
    out[q_idx, pos] = flat
    mask[q_idx, pos] = True
    return out, mask


def _highlight_labels(gts: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``(Q, C, 3)`` annotator scores 0..4 over all 2-s clips and the ``(Q, C)`` clip mask."""
    qids = [g["qid"] for g in gts]
    durations = _field(gts, "duration", "ground_truth")
    for qid, d in zip(qids, durations, strict=True):
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not math.isfinite(d) or d <= 0:
            raise ValueError(f"qid {qid}: duration must be a finite number of seconds > 0, "
                             f"got {d!r}")
    n_clips = np.fromiter((int(d / CLIP_SECONDS) for d in durations), dtype=np.int64,
                          count=len(gts))
    ids, id_lens = _flat(_field(gts, "relevant_clip_ids", "ground_truth"), "relevant_clip_ids",
                         qids)
    sal, sal_lens = _flat(_field(gts, "saliency_scores", "ground_truth"), "saliency_scores", qids)
    bad = np.flatnonzero(id_lens != sal_lens)
    if len(bad) or (len(sal) and sal.shape[1:] != (3,)):
        bad = bad if len(bad) else np.flatnonzero(sal_lens)
        raise ValueError(f"qid {qids[bad[0]]}: saliency_scores needs one [a0, a1, a2] per "
                         "relevant clip")
    _check_finite(sal, sal_lens, qids, "saliency_scores")
    _check_finite(ids, id_lens, qids, "relevant_clip_ids")
    bad = np.flatnonzero(ids.reshape(len(ids), -1) != np.round(ids.reshape(len(ids), -1)))
    if len(bad) or (len(ids) and ids.ndim != 1):
        q = np.repeat(np.arange(len(gts)), id_lens)[bad[0] if len(bad) else 0]
        raise ValueError(f"qid {qids[q]}: relevant_clip_ids must be a list of whole numbers")
    q_idx = np.repeat(np.arange(len(gts)), id_lens)
    ids = ids.astype(np.int64)
    bad = np.flatnonzero((ids < 0) | (ids >= n_clips[q_idx]))
    if len(bad):
        g = gts[q_idx[bad[0]]]
        raise ValueError(f"qid {g['qid']}: relevant_clip_ids outside the "
                         f"{n_clips[q_idx[bad[0]]]} clips of a {g['duration']} s video")
    scores = np.zeros((len(gts), int(n_clips.max(initial=0)), 3))
    if len(ids):
        scores[q_idx, ids] = sal.reshape(-1, 3)
    return scores, np.arange(scores.shape[1])[None, :] < n_clips[:, None]


def _check_finite(flat: np.ndarray, lens: np.ndarray, qids: Sequence[Any], what: str) -> None:
    """Flat ``(sum(lens), ...)`` values must be finite; ``ValueError`` naming the qid."""
    bad = np.flatnonzero(~np.isfinite(flat.reshape(len(flat), -1)).all(-1))
    if len(bad):
        q = np.repeat(np.arange(len(lens)), lens)[bad[0]]
        raise ValueError(f"qid {qids[q]}: {what} has a non-finite value {flat[bad[0]].tolist()}")


def _warn_saliency_length(qids: Sequence[Any], lens: np.ndarray, n_clips: np.ndarray,
                          gts: Sequence[dict]) -> None:
    """One :class:`SaliencyLengthWarning` naming the qids whose saliency is not one per clip."""
    bad = np.flatnonzero(lens != n_clips)
    if not len(bad):
        return
    first = bad[0]
    more = f" (and {len(bad) - 1} more qids: {[qids[i] for i in bad[1:6]]})" if len(bad) > 1 else ""
    warnings.warn(
        f"qid {qids[first]}: pred_saliency_scores has {lens[first]} scores for the "
        f"{n_clips[first]} clips of its {gts[first]['duration']} s video{more}; cut or zero-padded "
        "to the clip count, as Moment-DETR's standalone_eval does",
        SaliencyLengthWarning,
        stacklevel=4,
    )


def _highlight(submission: Sequence[dict], gts: Sequence[dict]) -> dict[str, dict]:
    qids = [r["qid"] for r in submission]
    gt_scores, cmask = _highlight_labels(gts)
    flat, lens = _flat(_field(submission, "pred_saliency_scores", "submission"),
                       "pred_saliency_scores", qids)
    if len(flat) and flat.ndim != 1:
        raise ValueError(f"qid {qids[np.flatnonzero(lens)[0]]}: pred_saliency_scores must be a "
                         "flat list of numbers, one per clip")
    _check_finite(flat, lens, qids, "pred_saliency_scores")
    _warn_saliency_length(qids, lens, cmask.sum(1), gts)
    raw, raw_mask = _scatter(flat, lens)
    c = cmask.shape[1]
    aligned = np.zeros((len(qids), c))
    width = min(c, raw.shape[1])
    aligned[:, :width] = np.where(raw_mask[:, :width], raw[:, :width], 0.0)
    aligned = torch.from_numpy(np.where(cmask, aligned, 0.0))
    raw, raw_mask, cmask = (torch.from_numpy(x) for x in (raw, raw_mask, cmask))
    # all levels x annotators in one pass: (Q, C, L * 3) labels share one ranking of the clips
    levels = np.asarray(list(HIGHLIGHT_LEVELS.values()))
    labels = gt_scores[..., None, :] >= levels[:, None]  # (Q, C, L, 3)
    labels = torch.from_numpy(labels.reshape(*labels.shape[:2], -1)) & cmask[..., None]
    ap = highlight_average_precision(aligned, labels, cmask).numpy().reshape(len(qids), -1, 3)
    hit = highlight_hit_at_one(raw, raw_mask, labels, cmask).numpy().reshape(len(qids), -1, 3)
    return {f"HL-min-{name}": {"HL-mAP": _pct(np.mean(ap[:, i])),
                               "HL-Hit1": _pct(np.mean(hit[:, i].max(1)))}
            for i, name in enumerate(HIGHLIGHT_LEVELS)}


def evaluate_qvhighlights(submission: Sequence[dict], ground_truth: Sequence[dict],
                          *, max_pred_windows: int = 10) -> dict:
    """QVHighlights moment retrieval + highlight detection, as Moment-DETR's ``standalone_eval``.

    Matches ``eval_submission``: the same keys (``brief`` first, then the per-level and
    per-length-bucket blocks, sorted) and the same numbers (percent, 2 decimals). The
    submission must cover exactly the ground-truth qids. A query with an empty
    ``pred_relevant_windows`` is left out of the mAP average, as in the official code, and
    scores an R1 miss (where the official code raises).

    ``pred_saliency_scores`` of another length than the video's 2-s clips are cut or
    zero-padded, as the official code does, with a :class:`~tpo.metrics.SaliencyLengthWarning`
    naming the qids.

    Raises:
        ValueError: unknown/missing/duplicate qids, windows with start > end, NaN / infinite
            numbers, rows lacking a field the first row has, malformed rows.
    """
    if not submission:
        raise ValueError("submission is empty")
    gts = _match(submission, ground_truth)
    if not any(k in submission[0] for k in ("pred_relevant_windows", "pred_saliency_scores")):
        raise ValueError(f"qid {submission[0]['qid']}: submission row has neither "
                         "'pred_relevant_windows' nor 'pred_saliency_scores'")
    metrics: dict[str, dict] = {}
    brief: OrderedDict[str, float] = OrderedDict()
    if "pred_relevant_windows" in submission[0]:
        mr = _moment_retrieval(submission, gts, max_pred_windows)
        metrics.update(mr)
        mr_brief = {
            "MR-full-mAP": mr["full"]["MR-mAP"]["average"],
            "MR-full-mAP@0.5": mr["full"]["MR-mAP"]["0.5"],
            "MR-full-mAP@0.75": mr["full"]["MR-mAP"]["0.75"],
            "MR-short-mAP": mr["short"]["MR-mAP"]["average"],
            "MR-middle-mAP": mr["middle"]["MR-mAP"]["average"],
            "MR-long-mAP": mr["long"]["MR-mAP"]["average"],
            "MR-full-R1@0.5": mr["full"]["MR-R1"]["0.5"],
            "MR-full-R1@0.7": mr["full"]["MR-R1"]["0.7"],
        }
        brief.update(sorted(mr_brief.items()))
    if "pred_saliency_scores" in submission[0]:
        hl = _highlight(submission, gts)
        metrics.update(hl)
        for level, block in hl.items():
            for key, value in block.items():
                brief[f"{level}-{key.split('-')[1]}"] = value
    out: OrderedDict[str, Any] = OrderedDict(brief=brief)
    out.update(sorted(metrics.items()))
    return out


def evaluate_charades_sta(predictions: Sequence[dict], annotations: Sequence[dict],
                          *, thresholds: Sequence[float] = (0.3, 0.5, 0.7)) -> dict[str, float]:
    """Charades-STA (or ActivityNet Captions) grounding: R1@IoU and mIoU, percent, 2 decimals.

    Rows as in QVHighlights: predictions ``{"qid", "pred_relevant_windows": [[st, ed(, score)],
    ...]}`` (the first listed window counts), annotations ``{"qid", "relevant_windows"}``. A hit
    is ``IoU >= threshold`` (the usual 2D-TAN / Moment-DETR convention); with several
    annotated windows the best-matching one counts.
    """
    if not predictions:
        raise ValueError("predictions are empty")
    gts = _match(predictions, annotations)
    qids = [r["qid"] for r in predictions]
    windows = _field(predictions, "pred_relevant_windows", "predictions")
    pred, pmask = _pack([w[:1] for w in windows], 2, qids, "pred_relevant_windows")
    gt, gmask = _pack([g["relevant_windows"] for g in gts], 2, qids, "relevant_windows")
    _check_windows(pred, pmask, qids, "pred_relevant_windows")
    _check_windows(gt, gmask, qids, "relevant_windows")
    empty = np.flatnonzero(~gmask.any(-1))
    if len(empty):
        raise ValueError(f"qid {qids[empty[0]]}: no relevant_windows")
    iou = moment_top1_iou(*(torch.from_numpy(x) for x in (pred, pmask, gt, gmask))).numpy()
    out = {f"R1@{t}": _pct(np.mean(iou >= t)) for t in thresholds}
    out["mIoU"] = _pct(np.mean(iou))
    return out

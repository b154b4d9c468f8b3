"""MomentRetrieval / HighlightDetection against slow references written from the definitions."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tpo.metrics import QVHIGHLIGHTS_LENGTH_BUCKETS, HighlightDetection, MomentRetrieval
from tpo.metrics import functional as TF

THRS = TF.MAP_IOU_THRESHOLDS


# ----------------------------------------------------------------- slow references (loops)
def ref_iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def ref_ap(preds, gts, thr):
    """preds [(s, e, score)], ranked by score (stable); greedy: best free GT with IoU >= thr."""
    if not preds:
        return 0.0
    ranked = sorted(preds, key=lambda p: -p[2])
    used, flags = set(), []
    for p in ranked:
        best, best_iou = None, None
        for j, g in enumerate(gts):
            iou = ref_iou(p, g)
            if j in used or iou < thr:
                continue
            if best is None or iou >= best_iou:  # ties: the later window
                best, best_iou = j, iou
        flags.append(best is not None)
        if best is not None:
            used.add(best)
    tp = 0
    prec, rec = [], []
    for k, f in enumerate(flags, 1):
        tp += f
        prec.append(tp / k)
        rec.append(tp / len(gts))
    ap, prev_r = 0.0, 0.0
    for i in range(len(prec)):
        ap += (rec[i] - prev_r) * max(prec[i:])
        prev_r = rec[i]
    return ap


def ref_top1_iou(preds, gts):
    if not preds:
        return 0.0
    p = preds[0]
    ious = [ref_iou(p, g) for g in gts]
    return ious[ious.index(max(ious))]


def ref_hl_ap(scores, labels):
    """AP at every distinct threshold that recalls a new positive, interpolated precision."""
    if all(labels) or not any(labels):
        return float(all(labels))
    n_pos = sum(labels)
    points = []  # (recall, precision) per distinct threshold, highest threshold first
    for t in sorted(set(scores), reverse=True):
        sel = [y for s, y in zip(scores, labels, strict=True) if s >= t]
        points.append((sum(sel) / n_pos, sum(sel) / len(sel)))
    vals, prev_r = [], 0.0
    for i, (r, _) in enumerate(points):
        if r > prev_r:
            vals.append(max(p for _, p in points[i:]))
        prev_r = r
    return sum(vals) / len(vals)


def random_query(rng: random.Random, edge: str | None = None):
    dur = 150.0
    n_gt = rng.randint(1, 4)
    gts = []
    for _ in range(n_gt):
        s = rng.choice([rng.uniform(0, dur - 2), float(rng.randrange(0, 140, 2))])
        gts.append((s, min(dur, s + rng.choice([rng.uniform(0.5, 60), 2.0 * rng.randint(1, 20)]))))
    n_pred = 0 if edge == "empty" else rng.randint(1, 12)
    preds = []
    for _ in range(n_pred):
        if edge == "identical" or rng.random() < 0.25:
            g = rng.choice(gts)
            preds.append((g[0], g[1], rng.choice([0.5, rng.random()])))
        elif edge == "nooverlap":
            preds.append((dur + 1, dur + 5, rng.random()))
        else:
            s = rng.uniform(0, dur)
            preds.append((s, min(dur, s + rng.uniform(0, 50)), rng.choice([0.5, rng.random()])))
    return preds, gts


def as_tensors(queries):
    preds = [torch.tensor(p, dtype=torch.float64).reshape(-1, 3) for p, _ in queries]
    gts = [torch.tensor(g, dtype=torch.float64).reshape(-1, 2) for _, g in queries]
    return preds, gts


def make_queries(seed: int, n: int = 40):
    rng = random.Random(seed)
    edges = [None, "empty", "identical", "nooverlap"]
    return [random_query(rng, edges[i % 4] if i < 8 else None) for i in range(n)]


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_functional_ap_and_r1_match_reference(seed):
    queries = make_queries(seed)
    preds, gts = as_tensors(queries)
    p, pm = TF.pad_windows(preds, 3, "preds")
    g, gm = TF.pad_windows(gts, 2, "gts")
    ap = TF.moment_average_precision(p[..., :2], p[..., 2], pm, g, gm)
    iou = TF.moment_top1_iou(p[..., :2], pm, g, gm)
    for i, (pr, gt) in enumerate(queries):
        expect = [ref_ap(pr[:], gt, t) for t in THRS]
        assert ap[i].tolist() == pytest.approx(expect, abs=1e-12), i
        assert iou[i].item() == pytest.approx(ref_top1_iou(pr, gt), abs=1e-12), i


def test_moment_retrieval_class_matches_reference_with_buckets():
    queries = make_queries(5, 60)
    preds, gts = as_tensors(queries)
    metric = MomentRetrieval(length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS)
    metric.update(preds, gts)
    out = metric.compute()

    def expected(qs):
        aps = [[ref_ap(p[:10], g, t) for t in THRS] for p, g in qs]
        ious = [ref_top1_iou(p, g) for p, g in qs]
        n = len(qs)
        return {"mAP": sum(sum(a) / len(a) for a in aps) / n,
                "mAP@0.5": sum(a[0] for a in aps) / n,
                "R1@0.7": sum(i >= 0.7 for i in ious) / n, "mIoU": sum(ious) / n}

    for name, want in expected(queries).items():
        assert out[name].item() == pytest.approx(want, abs=1e-12), name
    for bucket, (lo, hi) in QVHIGHLIGHTS_LENGTH_BUCKETS.items():
        qs = [(p, [w for w in g if lo < w[1] - w[0] <= hi]) for p, g in queries]
        qs = [(p, g) for p, g in qs if g]
        for name, want in expected(qs).items():
            assert out[f"{bucket}-{name}"].item() == pytest.approx(want, abs=1e-12), (bucket, name)


def test_moment_retrieval_hand_computed():
    metric = MomentRetrieval(r1_thresholds=(0.3, 0.5, 0.7))
    # IoU of [2, 6] with [0, 8] = 4 / 8 = 0.5 -> hit at 0.3 and 0.5, miss at 0.7.
    metric.update([torch.tensor([[2.0, 6.0]])], [torch.tensor([[0.0, 8.0]])])
    out = metric.compute()
    assert out["R1@0.3"] == 1 and out["R1@0.5"] == 1 and out["R1@0.7"] == 0
    assert out["mIoU"] == pytest.approx(0.5)
    assert out["mAP@0.5"] == 1 and out["mAP@0.75"] == 0
    assert out["mAP"] == pytest.approx(0.1)


def test_moment_retrieval_bad_input():
    metric = MomentRetrieval()
    with pytest.raises(ValueError, match=r"preds\[1\]: window with start > end"):
        metric.update([torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0, 1.0]])],
                      [torch.tensor([[0.0, 1.0]])] * 2)
    with pytest.raises(ValueError, match=r"target\[0\]: no ground-truth window"):
        metric.update([torch.tensor([[0.0, 1.0]])], [torch.zeros(0, 2)])
    with pytest.raises(ValueError, match=r"preds\[0\]: expected"):
        metric.update([torch.zeros(3)], [torch.tensor([[0.0, 1.0]])])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.integers(1, 19))
def test_moment_retrieval_order_invariant_and_chunked(seed, cut):
    queries = make_queries(seed, 20)
    preds, gts = as_tensors(queries)
    one = MomentRetrieval(length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS)
    one.update(preds, gts)
    chunked = MomentRetrieval(length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS)
    perm = random.Random(seed).sample(range(20), 20)
    chunked.update([preds[i] for i in perm[:cut]], [gts[i] for i in perm[:cut]])
    chunked.update([preds[i] for i in perm[cut:]], [gts[i] for i in perm[cut:]])
    a, b = one.compute(), chunked.compute()
    for k in a:
        assert a[k].item() == pytest.approx(b[k].item(), abs=1e-12), k


# ---------------------------------------------------------------------- highlights
def random_highlight(rng: random.Random):
    n = rng.randint(1, 20)
    target = [[rng.choice([0, 0, 1, 2, 3, 4]) for _ in range(3)] for _ in range(n)]
    if rng.random() < 0.2:
        target = [[0, 0, 0]] * n
    m = rng.choice([n, max(0, n - 3), n + 4])
    scores = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(m)]
    return scores, target


@pytest.mark.parametrize("seed", [0, 1])
def test_highlight_detection_matches_reference(seed):
    rng = random.Random(seed)
    data = [random_highlight(rng) for _ in range(60)]
    metric = HighlightDetection()
    metric.update([torch.tensor(s, dtype=torch.float64) for s, _ in data],
                  [torch.tensor(t, dtype=torch.float64).reshape(-1, 3) for _, t in data])
    out = metric.compute()
    for name, level in (("Fair", 2), ("Good", 3), ("VeryGood", 4)):
        aps, hits = [], []
        for scores, target in data:
            n = len(target)
            aligned = (scores + [0.0] * n)[:n]
            labels = [[int(c[a] >= level) for c in target] for a in range(3)]
            aps.append(sum(ref_hl_ap(aligned, lab) for lab in labels) / 3)
            if scores:
                top = scores.index(max(scores))
                hits.append(top < n and any(lab[top] for lab in labels))
            else:
                hits.append(False)
        assert out[f"{name}-mAP"].item() == pytest.approx(sum(aps) / len(aps), abs=1e-12)
        assert out[f"{name}-Hit1"].item() == pytest.approx(sum(hits) / len(hits), abs=1e-12)


def test_highlight_ap_agrees_with_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed")
    rng = random.Random(3)
    for _ in range(50):
        n = rng.randint(2, 30)
        y = [rng.random() < 0.4 for _ in range(n)]
        if all(y) or not any(y):
            continue
        s = [rng.choice([0.0, 0.25, 0.5, rng.random()]) for _ in range(n)]
        precision, recall, _ = sklearn_metrics.precision_recall_curve(y, s)
        for i in range(1, len(precision)):
            precision[i] = max(precision[i - 1], precision[i])
        keep = [i for i in range(len(recall) - 1) if recall[i] != recall[i + 1]]
        want = sum(precision[i] for i in keep) / len(keep)
        got = TF.highlight_average_precision(torch.tensor([s]), torch.tensor([y])[..., None],
                                             torch.ones(1, n, dtype=torch.bool))
        assert got.item() == pytest.approx(want, abs=1e-12)


def test_highlight_bad_input():
    metric = HighlightDetection()
    with pytest.raises(ValueError, match=r"target\[1\]"):
        metric.update([torch.zeros(3), torch.zeros(3)], [torch.zeros(3, 3), torch.zeros(3, 2)])
    with pytest.raises(ValueError, match=r"preds\[0\]"):
        metric.update([torch.zeros(3, 1)], [torch.zeros(3, 3)])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.integers(1, 9))
def test_highlight_order_invariant_and_chunked(seed, cut):
    rng = random.Random(seed)
    data = [random_highlight(rng) for _ in range(10)]
    preds = [torch.tensor(s, dtype=torch.float64) for s, _ in data]
    target = [torch.tensor(t, dtype=torch.float64).reshape(-1, 3) for _, t in data]
    one = HighlightDetection()
    one.update(preds, target)
    two = HighlightDetection()
    perm = rng.sample(range(10), 10)
    two.update([preds[i] for i in perm[:cut]], [target[i] for i in perm[:cut]])
    two.update([preds[i] for i in perm[cut:]], [target[i] for i in perm[cut:]])
    a, b = one.compute(), two.compute()
    for k in a:
        assert a[k].item() == pytest.approx(b[k].item(), abs=1e-12), k


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100, allow_subnormal=False),
                          st.floats(0, 50, allow_subnormal=False)), min_size=1, max_size=6),
       st.lists(st.tuples(st.floats(0, 100, allow_subnormal=False),
                          st.floats(0, 50, allow_subnormal=False)), min_size=1, max_size=6))
def test_temporal_iou_symmetric_and_bounded(a, b):
    # (subnormal lengths excluded: tpo.ops.spans.temporal_iou clamps unions at finfo.tiny)
    sa = torch.tensor([[s, s + w] for s, w in a], dtype=torch.float64)
    sb = torch.tensor([[s, s + w] for s, w in b], dtype=torch.float64)
    ab = TF.cross_temporal_iou(sa[None], sb[None])[0]
    ba = TF.cross_temporal_iou(sb[None], sa[None])[0]
    assert torch.equal(ab, ba.T)
    assert bool(((ab >= 0) & (ab <= 1)).all())
    assert torch.allclose(ab, TF.temporal_iou(sa, sb).to(ab))

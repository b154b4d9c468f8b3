"""Grounding and tracking metrics against slow references written from the definitions."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tpo.metrics import GOT10kMetrics, GroundingAccuracy, TrackingSuccess
from tpo.metrics import functional as TF

EPS = 2.220446049250313e-16  # float64 machine epsilon, the GOT-10k toolkit's IoU guard


def f64(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ----------------------------------------------------------------- slow references
def ref_box_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ref_rect_iou(a, b, bound=None):
    if bound is not None:
        def clip(r):
            x = min(max(r[0], 0.0), bound[0])
            y = min(max(r[1], 0.0), bound[1])
            return [x, y, min(max(r[2], 0.0), bound[0] - x), min(max(r[3], 0.0), bound[1] - y)]
        a, b = clip(a), clip(b)
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return min(1.0, max(0.0, inter / (a[2] * a[3] + b[2] * b[3] - inter + EPS)))


def ref_center(r):
    return r[0] + (r[2] - 1) / 2, r[1] + (r[3] - 1) / 2


def ref_sequence_curves(pred, gt):
    ious = [ref_rect_iou(p, g) for p, g in zip(pred, gt, strict=True)]
    ces, nces = [], []
    for p, g in zip(pred, gt, strict=True):
        (px, py), (gx, gy) = ref_center(p), ref_center(g)
        ces.append(math.sqrt((px - gx) ** 2 + (py - gy) ** 2))
        nces.append(math.sqrt(((px - gx) / max(1.0, g[2])) ** 2 + ((py - gy) / max(1.0, g[3])) ** 2))
    n = len(ious)
    succ = [sum(i > k / 20 for i in ious) / n for k in range(21)]
    prec = [sum(c <= k for c in ces) / n for k in range(51)]
    nprec = [sum(c <= k / 100 for c in nces) / n for k in range(51)]
    return succ, prec, nprec


def random_boxes_xyxy(rng, n, size=(640, 480)):
    out = []
    for _ in range(n):
        x1, y1 = rng.uniform(-50, size[0]), rng.uniform(-50, size[1])
        kind = rng.random()
        if kind < 0.1:
            w = h = 0.0  # degenerate
        elif kind < 0.2:
            x1 += 2000  # fully outside the frame
            w, h = rng.uniform(1, 100), rng.uniform(1, 100)
        else:
            w, h = rng.uniform(1, 200), rng.uniform(1, 200)
        out.append([x1, y1, x1 + w, y1 + h])
    return out


def jitter(rng, boxes, scale=20.0):
    out = []
    for b in boxes:
        if rng.random() < 0.15:
            out.append(list(b))  # identical
            continue
        x1 = b[0] + rng.gauss(0, scale)
        y1 = b[1] + rng.gauss(0, scale)
        out.append([x1, y1, max(x1, b[2] + rng.gauss(0, scale)), max(y1, b[3] + rng.gauss(0, scale))])
    return out


def to_xywh(boxes):
    return [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes]


# ----------------------------------------------------------------------- grounding
def test_box_iou_matches_reference_and_hand_values():
    rng = random.Random(0)
    gt = random_boxes_xyxy(rng, 300)
    pred = jitter(rng, gt)
    got = TF.box_iou(torch.tensor(pred, dtype=torch.float64), torch.tensor(gt, dtype=torch.float64))
    want = [ref_box_iou(p, g) for p, g in zip(pred, gt, strict=True)]
    assert got.tolist() == pytest.approx(want, abs=1e-12)
    # [0,0,2,2] vs [1,0,3,2]: inter 2, union 6
    two = TF.box_iou(torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]]), torch.tensor([[1.0, 0, 3, 2],
                                                                                [5, 5, 6, 6]]))
    assert two.tolist() == pytest.approx([1 / 3, 0.0])


def test_grounding_accuracy_boxes_and_masks():
    rng = random.Random(1)
    gt = random_boxes_xyxy(rng, 200)
    pred = jitter(rng, gt, 30.0)
    metric = GroundingAccuracy()
    metric.update(f64(pred[:70]), f64(gt[:70]))
    metric.update(f64(pred[70:]), f64(gt[70:]))
    out = metric.compute()
    ious = [ref_box_iou(p, g) for p, g in zip(pred, gt, strict=True)]
    assert out["acc@0.5"].item() == pytest.approx(sum(i >= 0.5 for i in ious) / len(ious))
    assert out["giou"].item() == pytest.approx(sum(ious) / len(ious), abs=1e-12)

    g = torch.Generator().manual_seed(0)
    pm = torch.rand(6, 9, 11, generator=g) > 0.5
    tm = torch.rand(6, 9, 11, generator=g) > 0.6
    pm[0] = False
    tm[0] = False  # empty-empty: IoU 1 (LISA's no-object rule)
    tm[1] = False  # empty target, non-empty prediction: IoU 0
    masks = GroundingAccuracy()
    masks.update(pm, tm)
    res = masks.compute()
    inters, unions, ious = [], [], []
    for k in range(6):
        i = sum(bool(pm[k, y, x] and tm[k, y, x]) for y in range(9) for x in range(11))
        u = sum(bool(pm[k, y, x] or tm[k, y, x]) for y in range(9) for x in range(11))
        inters.append(i)
        unions.append(u)
        ious.append(i / u if u else 1.0)
    assert res["giou"].item() == pytest.approx(sum(ious) / 6)
    assert res["ciou"].item() == pytest.approx(sum(inters) / sum(unions))
    assert res["acc@0.5"].item() == pytest.approx(sum(i >= 0.5 for i in ious) / 6)


def test_grounding_bad_input():
    metric = GroundingAccuracy()
    with pytest.raises(ValueError, match=r"boxes1\[1\]: expected x2 >= x1"):
        metric.update(torch.tensor([[0.0, 0, 1, 1], [5, 0, 1, 1]]), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="target: expected shape"):
        metric.update(torch.zeros(2, 5, 5, dtype=torch.bool), torch.zeros(2, 5, 6, dtype=torch.bool))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(*[st.floats(-100, 100)] * 2, *[st.floats(0, 80)] * 2), min_size=1,
                max_size=8),
       st.lists(st.tuples(*[st.floats(-100, 100)] * 2, *[st.floats(0, 80)] * 2), min_size=1,
                max_size=8))
def test_box_ious_symmetric_and_bounded(a, b):
    n = min(len(a), len(b))
    xa = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in a[:n]], dtype=torch.float64)
    xb = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in b[:n]], dtype=torch.float64)
    ab, ba = TF.box_iou(xa, xb), TF.box_iou(xb, xa)
    assert torch.equal(ab, ba) and bool(((ab >= 0) & (ab <= 1)).all())
    ra = torch.tensor(a[:n], dtype=torch.float64)
    rb = torch.tensor(b[:n], dtype=torch.float64)
    r1, r2 = TF.rect_iou(ra, rb), TF.rect_iou(rb, ra)
    assert torch.equal(r1, r2) and bool(((r1 >= 0) & (r1 <= 1)).all())
    # the toolkit's eps in the denominator only matters for (near-)empty boxes
    big = (ra[:, 2:].prod(-1) > 1e-3) & (rb[:, 2:].prod(-1) > 1e-3)
    assert torch.allclose(r1[big], ab[big], atol=1e-9)


# ------------------------------------------------------------------------- tracking
def make_sequences(seed, n_seq=6):
    rng = random.Random(seed)
    seqs = []
    for _ in range(n_seq):
        n = rng.randint(2, 60)
        gt = to_xywh(random_boxes_xyxy(rng, n))
        gt = [[round(v) for v in b] if rng.random() < 0.5 else b for b in gt]
        pred = to_xywh(jitter(rng, [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in gt]))
        visible = [rng.random() > 0.2 for _ in range(n)]
        visible[rng.randrange(n)] = True
        seqs.append((pred, gt, visible))
    return seqs


def test_tracking_success_matches_reference():
    seqs = make_sequences(0)
    metric = TrackingSuccess()
    curves = []
    for pred, gt, visible in seqs:
        metric.update(f64(pred), f64(gt), torch.tensor(visible))
        keep = [i for i, v in enumerate(visible) if v]
        curves.append(ref_sequence_curves([pred[i] for i in keep], [gt[i] for i in keep]))
    out = metric.compute()
    n = len(seqs)
    succ = [sum(c[0][k] for c in curves) / n for k in range(21)]
    prec = [sum(c[1][k] for c in curves) / n for k in range(51)]
    nprec = [sum(c[2][k] for c in curves) / n for k in range(51)]
    assert out["success_curve"].tolist() == pytest.approx(succ, abs=1e-12)
    assert out["precision_curve"].tolist() == pytest.approx(prec, abs=1e-12)
    assert out["norm_precision_curve"].tolist() == pytest.approx(nprec, abs=1e-12)
    assert out["success"].item() == pytest.approx(sum(succ) / 21)
    assert out["precision"].item() == pytest.approx(prec[20])
    assert out["norm_precision"].item() == pytest.approx(sum(nprec) / 51)


def test_tracking_hand_computed():
    gt = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    pred = torch.tensor([[0.0, 0, 10, 10], [5, 0, 10, 10]])  # IoU 1 and 50/150; centre error 0, 5
    succ = TF.success_curve(pred, gt)
    assert succ[0] == 1 and succ[6] == 1 and succ[7] == 0.5 and succ[20] == 0
    prec = TF.precision_curve(pred, gt)
    assert prec[4] == 0.5 and prec[5] == 1
    nprec = TF.normalized_precision_curve(pred, gt)  # normalised error 0.5
    assert nprec[49] == 0.5 and nprec[50] == 1


def test_got10k_matches_reference_pooled_over_frames():
    seqs = make_sequences(1)
    size = (640, 480)
    metric = GOT10kMetrics()
    ious = []
    for pred, gt, visible in seqs:
        metric.update(f64(pred), f64(gt), torch.tensor(visible), image_size=size)
        ious += [ref_rect_iou(p, g, size) for p, g, v in zip(pred[1:], gt[1:], visible[1:],
                                                             strict=True) if v]
    out = metric.compute()
    assert out["AO"].item() == pytest.approx(sum(ious) / len(ious), abs=1e-12)
    assert out["SR@0.5"].item() == pytest.approx(sum(i > 0.5 for i in ious) / len(ious))
    assert out["SR@0.75"].item() == pytest.approx(sum(i > 0.75 for i in ious) / len(ious))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_tracking_metrics_invariant_to_sequence_order(seed):
    seqs = make_sequences(seed, 5)
    order = random.Random(seed).sample(range(5), 5)
    results = []
    for idx in (range(5), order):
        a, b = TrackingSuccess(), GOT10kMetrics()
        for i in idx:
            pred, gt, visible = f64(seqs[i][0]), f64(seqs[i][1]), torch.tensor(seqs[i][2])
            a.update(pred, gt, visible)
            b.update(pred, gt, visible)
        results.append({**a.compute(), **b.compute()})
    for k, v in results[0].items():
        assert torch.allclose(v, results[1][k], atol=1e-12), k


def test_tracking_bad_input():
    with pytest.raises(ValueError, match="gt_xywh: expected shape"):
        TrackingSuccess().update(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="visible: expected shape"):
        GOT10kMetrics().update(torch.zeros(3, 4), torch.zeros(3, 4), torch.ones(2, dtype=torch.bool))

"""DAVIS J and F (and the JAndF metric) against slow references written from the definitions."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tpo.metrics import JAndF
from tpo.metrics import functional as TF


# ----------------------------------------------------------------- slow references
def ref_j(p, g, void=None):
    h, w = len(p), len(p[0])
    inter = union = 0
    for y in range(h):
        for x in range(w):
            if void is not None and void[y][x]:
                continue
            inter += p[y][x] and g[y][x]
            union += p[y][x] or g[y][x]
    return 1.0 if union == 0 else inter / union


def ref_boundary(seg):
    """seg2bmap: differs from the right, lower or lower-right neighbour (0 outside); last row
    compares with the right only, last column with the one below only, corner never."""
    h, w = len(seg), len(seg[0])

    def at(y, x):
        return seg[y][x] if y < h and x < w else False

    out = [[False] * w for _ in range(h)]
    for y in range(h):
        for x in range(w):
            s = seg[y][x]
            if y == h - 1 and x == w - 1:
                b = False
            elif y == h - 1:
                b = s != at(y, x + 1)
            elif x == w - 1:
                b = s != at(y + 1, x)
            else:
                b = s != at(y, x + 1) or s != at(y + 1, x) or s != at(y + 1, x + 1)
            out[y][x] = b
    return out


def ref_f(p, g, bound_th=0.008, void=None):
    h, w = len(p), len(p[0])
    if void is not None:
        p = [[p[y][x] and not void[y][x] for x in range(w)] for y in range(h)]
        g = [[g[y][x] and not void[y][x] for x in range(w)] for y in range(h)]
    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w))
    bp, bg = ref_boundary(p), ref_boundary(g)
    pts_p = [(y, x) for y in range(h) for x in range(w) if bp[y][x]]
    pts_g = [(y, x) for y in range(h) for x in range(w) if bg[y][x]]

    def matched(a, pts):
        return sum(any((y - v) ** 2 + (x - u) ** 2 <= r * r for v, u in pts) for y, x in a)

    if not pts_p and not pts_g:
        return 1.0
    if not pts_p:
        precision, recall = 1.0, 0.0
    elif not pts_g:
        precision, recall = 0.0, 1.0
    else:
        precision, recall = matched(pts_p, pts_g) / len(pts_p), matched(pts_g, pts_p) / len(pts_g)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def blobs(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    """Frames of random ellipses plus salt noise, with an empty and a full frame."""
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((t, h, w), dtype=bool)
    for k in range(t):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(1, h / 2 + 1), rng.uniform(1, w / 2 + 1)
        out[k] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        out[k] ^= rng.random((h, w)) < 0.03
    if t > 2:
        out[0] = False
        out[1] = True
    return out


CASES = [(4, 17, 23, 0.05), (3, 9, 70, 0.008), (3, 12, 130, 2.0), (2, 1, 66, 0.3),
         (2, 20, 1, 0.3), (3, 16, 64, 0.12), (2, 6, 300, 70.0)]


@pytest.mark.parametrize(("t", "h", "w", "bound_th"), CASES)
def test_j_and_f_match_slow_reference(t, h, w, bound_th):
    rng = np.random.default_rng(h * 1000 + w)
    pred, gt = blobs(rng, t, h, w), blobs(rng, t, h, w)
    gt[-1] = pred[-1]  # identical masks
    if t > 2:
        pred[2] = False  # empty prediction against a non-empty target
    void = rng.random((t, h, w)) < 0.1
    pt, gtt, vt = torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(void)
    j, f = TF.j_and_f(pt, gtt, bound_th)
    for k in range(t):
        p, g = pred[k].tolist(), gt[k].tolist()
        assert j[k].item() == pytest.approx(ref_j(p, g), abs=1e-12), k
        assert f[k].item() == pytest.approx(ref_f(p, g, bound_th), abs=1e-12), k
    jv = TF.region_similarity(pt, gtt, void=vt)
    fv = TF.boundary_f_measure(pt, gtt, bound_th, void=vt)
    for k in range(t):
        p, g, v = pred[k].tolist(), gt[k].tolist(), void[k].tolist()
        assert jv[k].item() == pytest.approx(ref_j(p, g, v), abs=1e-12), k
        assert fv[k].item() == pytest.approx(ref_f(p, g, bound_th, v), abs=1e-12), k


def test_hand_computed_boundary():
    # 4x4 frame. A pixel is on the boundary when it differs from its right, lower or
    # lower-right neighbour. Square at rows 0-1, cols 0-1: {(0,1), (1,0), (1,1)}.
    # Square at rows 0-1, cols 1-2: {(0,0), (1,0), (0,2), (1,1), (1,2)} ((0,0), (1,0) are
    # background pixels whose right neighbour is object).
    sq = torch.zeros(4, 4, dtype=torch.bool)
    sq[:2, :2] = True
    shifted = torch.zeros(4, 4, dtype=torch.bool)
    shifted[:2, 1:3] = True
    # radius 1 px: every boundary pixel of one lies within 1 px of the other's.
    assert TF.boundary_f_measure(sq, shifted, bound_th=1).item() == 1.0
    # radius 0: shared {(1,0), (1,1)} -> P = 2/3, R = 2/5 -> F = 2PR / (P + R) = 1/2
    assert TF.boundary_f_measure(sq, shifted, bound_th=0.0).item() == pytest.approx(0.5)
    assert TF.region_similarity(sq, shifted).item() == pytest.approx(2 / 6)
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert TF.region_similarity(empty, empty).item() == 1.0
    assert TF.boundary_f_measure(empty, empty).item() == 1.0
    assert TF.boundary_f_measure(empty, sq).item() == 0.0
    assert TF.boundary_f_measure(sq, empty).item() == 0.0


def test_against_opencv_skimage_definition():
    cv2 = pytest.importorskip("cv2", reason="opencv not installed (local cross-check only)")
    morphology = pytest.importorskip("skimage.morphology", reason="scikit-image not installed")
    rng = np.random.default_rng(7)
    pred, gt = blobs(rng, 5, 120, 200), blobs(rng, 5, 120, 200)
    r = int(np.ceil(0.008 * np.linalg.norm((120, 200))))
    kernel = morphology.disk(r).astype(np.uint8)
    got = TF.boundary_f_measure(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    for k in range(5):
        bp = np.array(ref_boundary(pred[k].tolist()), dtype=np.uint8)
        bg = np.array(ref_boundary(gt[k].tolist()), dtype=np.uint8)
        p_ok = (bp & cv2.dilate(bg, kernel)).sum() / max(bp.sum(), 1)
        r_ok = (bg & cv2.dilate(bp, kernel)).sum() / max(bg.sum(), 1)
        want = 2 * p_ok * r_ok / (p_ok + r_ok) if p_ok + r_ok else 0.0
        if bp.sum() == 0 or bg.sum() == 0:
            want = float(bp.sum() == bg.sum())
        assert got[k] == pytest.approx(want, abs=1e-12)


def test_j_and_f_metric_class():
    rng = np.random.default_rng(3)
    objects = [(blobs(rng, t, 15, 40), blobs(rng, t, 15, 40)) for t in (3, 5, 4)]
    metric = JAndF(bound_th=0.1)
    drop = JAndF(bound_th=0.1, drop_first_last=True)
    js, fs = [], []
    for p, g in objects:
        metric.update(torch.from_numpy(p), torch.from_numpy(g))
        drop.update(torch.from_numpy(p), torch.from_numpy(g))
        jj = [ref_j(p[k].tolist(), g[k].tolist()) for k in range(len(p))]
        ff = [ref_f(p[k].tolist(), g[k].tolist(), 0.1) for k in range(len(p))]
        js.append(jj)
        fs.append(ff)
    out, out_in = metric.compute(), drop.compute()
    j = sum(sum(x) / len(x) for x in js) / 3
    f = sum(sum(x) / len(x) for x in fs) / 3
    assert out["J"].item() == pytest.approx(j) and out["F"].item() == pytest.approx(f)
    assert out["J&F"].item() == pytest.approx((j + f) / 2)
    assert out["J-recall"].item() == pytest.approx(
        sum(sum(v > 0.5 for v in x) / len(x) for x in js) / 3)
    j_in = sum(sum(x[1:-1]) / len(x[1:-1]) for x in js) / 3
    assert out_in["J"].item() == pytest.approx(j_in)


def test_masks_bad_input():
    with pytest.raises(ValueError, match="gt: expected shape"):
        TF.region_similarity(torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="void: expected shape"):
        TF.boundary_f_measure(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), void=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="preds: expected"):
        JAndF().update(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="whole"):
        TF.boundary_f_measure(torch.zeros(4, 4), torch.zeros(4, 4), bound_th=2.5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), h=st.integers(1, 12), w=st.integers(1, 80))
def test_j_f_symmetric_bounded(seed, h, w):
    rng = np.random.default_rng(seed)
    a = torch.from_numpy(rng.random((2, h, w)) < rng.random())
    b = torch.from_numpy(rng.random((2, h, w)) < rng.random())
    jab, fab = TF.j_and_f(a, b, 0.1)
    jba, fba = TF.j_and_f(b, a, 0.1)
    assert torch.equal(jab, jba) and torch.allclose(fab, fba, atol=1e-15)
    for v in (jab, fab):
        assert bool(((v >= 0) & (v <= 1)).all())
    j_same, f_same = TF.j_and_f(a, a.clone(), 0.1)
    assert bool((j_same == 1).all()) and bool((f_same == 1).all())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_j_and_f_invariant_to_object_order(seed):
    rng = np.random.default_rng(seed)
    objects = [(torch.from_numpy(blobs(rng, 3, 10, 20)), torch.from_numpy(blobs(rng, 3, 10, 20)))
               for _ in range(4)]
    a, b = JAndF(), JAndF()
    for p, g in objects:
        a.update(p, g)
    for k in random.Random(seed).sample(range(4), 4):
        b.update(*objects[k])
    ra, rb = a.compute(), b.compute()
    for k in ra:
        assert ra[k].item() == pytest.approx(rb[k].item(), abs=1e-12)

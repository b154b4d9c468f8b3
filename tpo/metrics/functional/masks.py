"""DAVIS region similarity J and boundary F-measure, vectorised over frames.

Semantics of the DAVIS 2017 toolkit (``davis2017/metrics.py``):

- ``J = |pred & gt| / |pred | gt|`` outside void pixels; an empty union gives 1.
- ``F``: boundaries are 1-px maps from ``seg2bmap`` (a pixel is on the boundary when it
  differs from its right, lower or lower-right neighbour; the last row compares only to the
  right, the last column only downwards, the bottom-right pixel is never on it). Each map is
  dilated by a disk of radius ``ceil(bound_th * ||(H, W)||)`` px (``bound_th >= 1``: that many
  px); precision is the share of predicted boundary pixels within the dilated ground-truth
  boundary, recall the converse, ``F = 2PR / (P + R)``. No predicted boundary: P = 1, R = 0;
  no ground-truth boundary: P = 0, R = 1; neither: F = 1.

Rows are bit-packed into 64-bit words (NumPy), so boundary extraction and the disk dilation
(horizontal runs of half-width ``isqrt(r^2 - dy^2)`` per row offset ``dy``: the exact digital
disk of ``skimage.morphology.disk``, as ``cv2.dilate`` applies it) run as shifts, ORs and
popcounts on words, in cache-sized chunks of frames, restricted to the window where the two
boundaries come within ``r`` of each other. Results are bit-identical to the toolkit's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["region_similarity", "boundary_f_measure", "j_and_f", "boundary_radius",
           "mask_intersection_union"]

_ONE = np.uint64(1)


def _as_frames(mask: Tensor, name: str) -> Tensor:
    if mask.ndim not in (2, 3):
        raise ValueError(f"{name}: expected (T, H, W) or (H, W) masks, got {tuple(mask.shape)}")
    mask = mask.detach().cpu()
    if mask.is_floating_point() and bool(mask.isnan().any()):
        raise ValueError(f"{name}: mask holds NaN; expected bool or 0/1 masks (nonzero = object)")
    return (mask if mask.dtype == torch.bool else mask != 0).reshape(-1, *mask.shape[-2:])


def _check(pred: Tensor, gt: Tensor, void: Tensor | None) -> None:
    for name, x in (("pred", pred), ("gt", gt), ("void", void)):
        if not isinstance(x, Tensor) and (x is not None or name != "void"):
            raise ValueError(f"{name}: expected a tensor of masks, got {type(x).__name__}")
    if pred.shape != gt.shape:
        raise ValueError(f"gt: expected shape {tuple(pred.shape)} like pred, got {tuple(gt.shape)}")
    if void is not None and void.shape != gt.shape:
        raise ValueError(f"void: expected shape {tuple(gt.shape)} like gt, got {tuple(void.shape)}")


def _pack(mask: Tensor) -> np.ndarray:
    """``(T, H, W)`` bool -> ``(T, ceil(W / 64), H)`` uint64; bit ``i`` of word ``k`` is column
    ``64 k + i``; padding bits are 0. Words lead rows so that both shifts slice contiguously."""
    t, h, w = mask.shape
    packed = np.packbits(np.ascontiguousarray(mask.numpy()), axis=-1, bitorder="little")
    n_words = -(-w // 64)
    out = np.zeros((t, h, n_words * 8), dtype=np.uint8)
    out[..., : packed.shape[-1]] = packed
    words = out.view("<u8").astype(np.uint64, copy=False)
    return np.ascontiguousarray(words.transpose(0, 2, 1))


def _from_right(x: np.ndarray) -> np.ndarray:
    """Column ``c`` takes the value of column ``c + 1`` (zero fill)."""
    out = x >> _ONE
    out[:, :-1] |= x[:, 1:] << np.uint64(63)
    return out


def _next_row(x: np.ndarray) -> np.ndarray:
    """Row ``y`` takes row ``y + 1`` (zero for the last row) of ``(T, n_words, H)`` words."""
    out = np.empty_like(x)
    out.reshape(-1)[:-1] = x.reshape(-1)[1:]
    out[..., -1] = 0
    return out


def _boundary(seg: np.ndarray, width: int) -> np.ndarray:
    """DAVIS ``seg2bmap`` on packed ``(T, n_words, H)`` rows."""
    east = _from_right(seg)
    south = _next_row(seg)
    south_east = _next_row(east)
    b = seg ^ east
    b_s = seg ^ south
    b |= b_s
    b |= np.bitwise_xor(seg, south_east, out=south_east)
    word, bit = divmod(width - 1, 64)
    last_col = _ONE << np.uint64(bit)
    b[:, word] = (b[:, word] & ~last_col) | (b_s[:, word] & last_col)
    b[..., -1] = seg[..., -1] ^ east[..., -1]
    b[:, word, -1] &= ~last_col
    return b


def _grow(cur: np.ndarray, k: int, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """``out = cur | cur`` shifted ``k`` columns each way (``1 <= k <= 63``), carries across
    words included; buffers are reused to avoid page faults."""
    shift, back = np.uint64(k), np.uint64(64 - k)
    np.right_shift(cur, shift, out=out)
    np.left_shift(cur[:, 1:], back, out=tmp[:, :-1])
    out[:, :-1] |= tmp[:, :-1]
    np.left_shift(cur, shift, out=tmp)
    out |= tmp
    np.right_shift(cur[:, :-1], back, out=tmp[:, 1:])
    out[:, 1:] |= tmp[:, 1:]
    out |= cur
    return out


def _runs(b: np.ndarray, widths: set[int]) -> dict[int, np.ndarray]:
    """Horizontal dilations ``H_w`` (half-width ``w``) for every ``w`` in ``widths``.

    ``H_a | shift(H_a, +-k)`` is ``H_{a+k}`` for ``k <= a + 1`` (and ``k <= 63``): each width
    costs one shift-and-OR pass from the widest run below it, a doubling ladder fills larger
    gaps. (``k <= a + 1`` also keeps every intermediate value between the output pixel and
    the input pixels it needs, so computing on a cropped window stays exact.)
    """
    runs = {0: b}
    tmp = np.empty_like(b)
    for w in sorted(widths - {0}):
        a = max(runs)
        while w - a > min(a + 1, 63):  # a shift spans at most one word boundary
            k = min(a + 1, 63)
            runs[a + k] = _grow(runs[a], k, np.empty_like(b), tmp)
            a += k
        runs[w] = _grow(runs[a], w - a, np.empty_like(b), tmp)
    return runs


def _dilate_disk(b: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of packed ``(T, n_words, H)`` rows by the digital disk
    ``dx^2 + dy^2 <= radius^2``. The last ``radius`` rows of ``b`` must be zero padding: row
    offsets are then flat shifts that never mix two word columns (the padding rows of the
    result are left undefined)."""
    widths = [math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1)]
    runs = _runs(b, set(widths))
    out = runs[radius].copy() if radius == 0 else runs[radius]
    flat = out.reshape(-1)
    for dy in range(1, radius + 1):
        run = runs[widths[dy]].reshape(-1)
        flat[:-dy] |= run[dy:]
        flat[dy:] |= run[:-dy]
    return out


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per frame of ``(T, ...)`` words -> ``(T,)`` int64 (byte table before NumPy 2)."""
    if hasattr(np, "bitwise_count"):
        counts = np.bitwise_count(x)
    else:
        counts = _POP8[np.ascontiguousarray(x).view(np.uint8)]
    return counts.reshape(x.shape[0], -1).sum(-1, dtype=np.int64)


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> int:
    """Dilation radius in px: ``ceil(bound_th * sqrt(H^2 + W^2))``, or ``bound_th`` if >= 1."""
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"bound_th >= 1 is a radius in px and must be whole, got {bound_th}")
        return int(bound_th)
    if bound_th < 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    """Append ``n`` zero rows to ``(T, n_words, H)`` words."""
    out = np.zeros((*x.shape[:2], x.shape[2] + n), dtype=x.dtype)
    out[..., : x.shape[2]] = x
    return out


def _extent(b: np.ndarray, axis: tuple[int, int]) -> tuple[int, int] | None:
    idx = np.flatnonzero(b.any(axis=axis))
    return None if len(idx) == 0 else (int(idx[0]), int(idx[-1]))


def _overlap_window(fg_b: np.ndarray, gt_b: np.ndarray, radius: int) -> tuple | None:
    """Words x rows where a boundary pixel of one map can lie within ``radius`` of the other's.

    Matches only occur inside ``expand(box(fg), r) & expand(box(gt), r)``, and every boundary
    pixel within ``r`` of such a match lies there too, so both dilations may be computed on
    this window alone (zero outside it). ``None`` when nothing can match.
    """
    margin_words = -(-radius // 64)
    spans = []
    for axis, margin in (((0, 2), margin_words), ((0, 1), radius)):
        ext_f, ext_g = _extent(fg_b, axis), _extent(gt_b, axis)
        if ext_f is None or ext_g is None:
            return None
        lo = max(ext_f[0], ext_g[0]) - margin
        hi = min(ext_f[1], ext_g[1]) + margin
        if lo > hi:
            return None
        spans.append(slice(max(lo, 0), hi + 1))
    return np.s_[:, spans[0], spans[1]]


_CHUNK_WORDS = 1 << 15  # frames are processed in chunks of about this many words (cache-sized)


def _f_from_packed(fg: np.ndarray, gt: np.ndarray, width: int, radius: int) -> Tensor:
    t = fg.shape[0]
    step = max(1, _CHUNK_WORDS // max(1, fg.shape[1] * fg.shape[2]))
    n_fg, n_gt = np.zeros(t, np.int64), np.zeros(t, np.int64)
    fg_match, gt_match = np.zeros(t, np.int64), np.zeros(t, np.int64)
    for lo in range(0, t, step):
        sl = slice(lo, lo + step)
        fg_b, gt_b = _boundary(fg[sl], width), _boundary(gt[sl], width)
        n_fg[sl], n_gt[sl] = _popcount(fg_b), _popcount(gt_b)
        crop = _overlap_window(fg_b, gt_b, radius)
        if crop is None:
            continue
        fg_c, gt_c = _pad_rows(fg_b[crop], radius), _pad_rows(gt_b[crop], radius)
        fg_match[sl] = _popcount(fg_c & _dilate_disk(gt_c, radius))
        gt_match[sl] = _popcount(gt_c & _dilate_disk(fg_c, radius))
    both = (n_fg > 0) & (n_gt > 0)
    precision = np.where(both, fg_match / np.maximum(n_fg, 1), np.where(n_fg == 0, 1.0, 0.0))
    recall = np.where(both, gt_match / np.maximum(n_gt, 1), np.where(n_gt == 0, 1.0, 0.0))
    total = precision + recall
    f = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1.0), 0.0)
    return torch.from_numpy(f)


def _prepare(pred: Tensor, gt: Tensor, void: Tensor | None) -> tuple[Tensor, Tensor, bool]:
    _check(pred, gt, void)
    squeeze = pred.ndim == 2
    p, g = _as_frames(pred, "pred"), _as_frames(gt, "gt")
    if void is not None:
        keep = ~_as_frames(void, "void")
        p, g = p & keep, g & keep
    return p, g, squeeze


def _j_from_packed(p: np.ndarray, g: np.ndarray) -> Tensor:
    inter = _popcount(p & g)
    union = _popcount(p | g)
    return torch.from_numpy(np.where(union == 0, 1.0, inter / np.maximum(union, 1)))


def region_similarity(pred: Tensor, gt: Tensor, void: Tensor | None = None) -> Tensor:
    """DAVIS ``db_eval_iou``: ``pred (T, H, W)``, ``gt (T, H, W)`` (nonzero = object),
    optional ``void (T, H, W)`` -> ``(T,)`` float64 J per frame (``(H, W)`` in: a scalar)."""
    p, g, squeeze = _prepare(pred, gt, void)
    j = _j_from_packed(_pack(p), _pack(g))
    return j[0] if squeeze else j


def boundary_f_measure(pred: Tensor, gt: Tensor, bound_th: float = 0.008,
                       void: Tensor | None = None) -> Tensor:
    """DAVIS ``db_eval_boundary``: ``pred (T, H, W)``, ``gt (T, H, W)`` -> ``(T,)`` float64 F."""
    p, g, squeeze = _prepare(pred, gt, void)
    radius = boundary_radius(p.shape[-2], p.shape[-1], bound_th)
    f = _f_from_packed(_pack(p), _pack(g), p.shape[-1], radius)
    return f[0] if squeeze else f


def j_and_f(pred: Tensor, gt: Tensor, bound_th: float = 0.008,
            void: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Both per-frame measures from one packing: ``(T,)`` J and ``(T,)`` F."""
    p, g, squeeze = _prepare(pred, gt, void)
    radius = boundary_radius(p.shape[-2], p.shape[-1], bound_th)
    pp, gp = _pack(p), _pack(g)
    j, f = _j_from_packed(pp, gp), _f_from_packed(pp, gp, p.shape[-1], radius)
    return (j[0], f[0]) if squeeze else (j, f)


def mask_intersection_union(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel counts per mask: ``pred (N, H, W)``, ``gt (N, H, W)`` -> ``(N,)`` intersection and
    ``(N,)`` union (int64)."""
    _check(pred, gt, None)
    p, g = _as_frames(pred, "pred"), _as_frames(gt, "gt")
    pp, gp = _pack(p), _pack(g)
    return torch.from_numpy(_popcount(pp & gp)), torch.from_numpy(_popcount(pp | gp))

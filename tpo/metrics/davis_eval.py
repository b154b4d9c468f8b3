"""Folder-level J&F evaluation of video object segmentation results (PNG folders), as the
official evaluators score them.

``davis`` layout: davis2017-evaluation's ``DAVISEvaluation(davis_root, "semi-supervised",
split).evaluate(results)`` and the tables of its ``evaluation_method.py``:

- sequences of ``ImageSets/2017/<split>.txt``; ground truth ``Annotations/480p/<seq>/*.png``;
  the objects are ``1..K``, ``K`` the largest object id of the first annotation;
- the first and the last annotated frame are not scored (``[1:-1]``); the results are read
  for the scored frames only, ``DIR/<seq>/<frame>.png`` named as the annotations, palette
  index ``k`` = object ``k`` (0 background); an object absent from the results is empty, an
  index above ``K`` is an error (the official code stops there), so is a missing file;
- void (255) is background: the semi-supervised path passes no void mask;
- per object, ``J`` (``db_eval_iou``) and ``F`` (``db_eval_boundary``, ``bound_th`` 0.008) per
  frame, then ``db_statistics``: mean, recall (share of frames above 0.5) and decay (mean of
  the first minus mean of the last of four overlapping frame bins, whose bounds the official
  code keeps in ``uint8``: they wrap past 255 scored frames, which this replicates);
- ``J-Mean``, ``J-Recall``, ``J-Decay`` (and ``F-...``) average over every object of every
  sequence, ``J&F-Mean = (J-Mean + F-Mean) / 2``; per object ``<seq>_<k>``: ``J-Mean`` and
  ``F-Mean`` (the per-sequence CSV). Fractions in [0, 1], as the official CSVs hold them.

``mevis`` layout: MeViS' ``tools/eval_mevis.py``. Per expression of
``<split>/meta_expressions.json`` the ground truth is the union of its ``anno_id`` masks
(``mask_dict.json``), the result ``DIR/<vid>/<eid>/<frame>.png`` (nonzero = object) for every
frame of the video; ``J`` and ``F`` are averaged over all frames, then over expressions. A
video folder missing from the results scores ``J = F = 0`` (listed under ``missing``), as the
official script does; a missing frame is an error. ``refytvos`` layout: Ref-YouTube-VOS
(``meta_expressions/<split>/meta_expressions.json``, ``<split>/Annotations``), scored with the
same protocol, the ground truth being the expression's object in the palette annotations.

Every mask is bit-packed and scored with :func:`tpo.metrics.functional.j_and_f`, one sequence
(and object) at a time, in one process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from tpo.metrics.functional import j_and_f

__all__ = ["DEFAULT_SPLITS", "LAYOUTS", "db_statistics", "detect_layout", "eval_davis", "read_result_mask"]

LAYOUTS = ("davis", "mevis", "refytvos")
DEFAULT_SPLITS = {"davis": "val", "mevis": "valid_u", "refytvos": "valid"}
_RESOLUTION = "480p"
_MODES = ("P", "L")
_MEASURES = ("Mean", "Recall", "Decay")


def detect_layout(gt_root: str | os.PathLike) -> str:
    """``davis`` (``ImageSets/2017``), ``refytvos`` (``meta_expressions/``) or ``mevis`` (a
    ``<split>/mask_dict.json``) from what ``gt_root`` holds.

    Raises:
        FileNotFoundError: ``gt_root`` is not a folder.
        ValueError: none of the three layouts, naming what was looked for.
    """
    gt_root = os.fspath(gt_root)
    if not os.path.isdir(gt_root):
        raise FileNotFoundError(f"--gt {gt_root}: no such ground-truth root folder")
    if os.path.isdir(os.path.join(gt_root, "ImageSets", "2017")):
        return "davis"
    if os.path.isdir(os.path.join(gt_root, "meta_expressions")):
        return "refytvos"
    if any(os.path.isfile(os.path.join(gt_root, d, "mask_dict.json")) for d in os.listdir(gt_root)):
        return "mevis"
    raise ValueError(f"--gt {gt_root}: not a DAVIS (ImageSets/2017/), Ref-YouTube-VOS "
                     f"(meta_expressions/) or MeViS (<split>/mask_dict.json) root; pass --layout")


def db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame ``values (T,)``, as davis2017's
    ``utils.db_statistics`` computes them under NumPy 2: recall is the share of frames with a
    value above 0.5, decay the mean of the first minus the mean of the last of four overlapping
    bins ``values[b_i : b_{i+1} + 1]``, whose bounds ``b_i = round(1 + i (T - 1) / 4) - 1`` are
    ``uint8`` and so is ``b_{i+1} + 1``: both wrap modulo 256 (past 255 scored frames a bin can
    be empty, and the decay NaN)."""
    values = np.asarray(values, dtype=np.float64)
    bounds = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64) % 256
    ends = (bounds + 1) % 256
    first, last = values[bounds[0]:ends[1]], values[bounds[3]:ends[4]]
    decay = first.mean() - last.mean() if len(first) and len(last) else math.nan
    return float(np.mean(values)), float(np.mean(values > 0.5)), float(decay)


def read_result_mask(path: str, size: tuple[int, int], where: str) -> np.ndarray:
    """``(H, W)`` uint8 pixel values of a result PNG (palette indices or grey levels).

    Raises:
        FileNotFoundError: the file is missing (named, with ``where``).
        ValueError: the file is not a palette / grey-level image, or not of ``size``
            ``(height, width)`` (both sizes named).
    """
    try:
        with Image.open(path) as image:
            if image.mode not in _MODES:
                raise ValueError(f"--results {path}: {where}: a {image.mode} image; expected a "
                                 f"palette (P) or grey-level (L) PNG of object ids")
            mask = np.asarray(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"--results {path}: no such result mask ({where}); expected one "
                                f"PNG per scored frame, named as the ground truth's") from None
    except OSError as err:
        raise ValueError(f"--results {path}: {where}: cannot read it as a PNG ({err})") from None
    if mask.shape != tuple(size):
        raise ValueError(f"--results {path}: {where}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                         f"expected the ground truth's {size[1]}x{size[0]}")
    return mask


def _read_masks(paths: Sequence[str], size: tuple[int, int], where: str) -> np.ndarray:
    """``(T, H, W)`` uint8 result masks (see :func:`read_result_mask`)."""
    out = np.empty((len(paths), *size), dtype=np.uint8)
    for t, path in enumerate(paths):
        out[t] = read_result_mask(path, size, where)
    return out


def _j_f(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F ``(T,)`` float64 of ``pred (T, H, W)`` against ``gt (T, H, W)`` bool."""
    j, f = j_and_f(torch.from_numpy(pred), torch.from_numpy(gt))
    return j.numpy(), f.numpy()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------- DAVIS 2017


def _davis_annotations(gt_root: str, seq: str) -> tuple[list[str], int, tuple[int, int]]:
    """Annotation paths of ``seq`` (sorted), its object count ``K`` (largest first-frame id) and
    its frame size ``(H, W)``, after the checks of
    :func:`tpo.datamodules.formats.davis.read_sequence`."""
    from tpo.datamodules.formats import davis
    from tpo.datamodules.formats._frames import frame_size

    try:
        sample = davis.read_sequence(gt_root, seq, _RESOLUTION)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"--gt {err}") from None
    anno_dir = os.path.join(gt_root, "Annotations", _RESOLUTION, seq)
    paths = sorted(os.path.join(anno_dir, f) for f in os.listdir(anno_dir) if f.endswith(".png"))
    if len(paths) < 3:
        raise ValueError(f"--gt {anno_dir}: {len(paths)} annotated frames; the semi-supervised "
                         f"evaluation scores all but the first and last, expected >= 3")
    return paths, max(sample.object_ids), frame_size(sample.frames[0])


def _read_annotations(paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
    """``(T, H, W)`` uint8 object ids of DAVIS annotations, each checked to be ``size``."""
    from tpo.datamodules.formats._frames import read_label_map

    out = np.empty((len(paths), *size), dtype=np.uint8)
    for t, path in enumerate(paths):
        try:
            label = read_label_map(path)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"--gt {err}") from None
        if label.shape != tuple(size):
            raise ValueError(f"--gt {path}: annotation is {label.shape[1]}x{label.shape[0]}, "
                             f"expected the frames' {size[1]}x{size[0]}")
        out[t] = label
    return out


def _davis_sequence(results_dir: str, gt_root: str, seq: str) -> tuple[np.ndarray, np.ndarray]:
    """``(K, T - 2)`` per-frame J and F of one DAVIS sequence's objects (frames ``1..T-2``)."""
    annotations, n_objects, size = _davis_annotations(gt_root, seq)
    scored = annotations[1:-1]
    gt = _read_annotations(scored, size)
    names = [os.path.splitext(os.path.basename(p))[0] for p in scored]
    paths = [os.path.join(results_dir, seq, f"{n}.png") for n in names]
    pred = _read_masks(paths, size, f"sequence {seq}")
    peaks = pred.reshape(len(pred), -1).max(1)
    if peaks.max() > n_objects:
        t = int(np.argmax(peaks > n_objects))
        raise ValueError(f"--results {paths[t]}: object id {int(peaks[t])} but sequence {seq} has "
                         f"{n_objects} objects (ids 1..{n_objects} of its first annotation)")
    j = np.empty((n_objects, len(scored)))
    f = np.empty_like(j)
    for k in range(1, n_objects + 1):
        j[k - 1], f[k - 1] = _j_f(pred == k, gt == k)
    return j, f


def _sequence_names(gt_root: str, split: str) -> list[str]:
    from tpo.datamodules.formats._io import read_lines

    list_path = os.path.join(gt_root, "ImageSets", "2017", f"{split}.txt")
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"--gt {list_path}: no such DAVIS split list")
    names = [line.strip() for line in read_lines(list_path) if line.strip()]
    if not names:
        raise ValueError(f"--gt {list_path}: no sequence listed")
    return names


def _eval_davis2017(results_dir: str, gt_root: str, split: str) -> dict:
    stats: dict[str, list] = {"J": [], "F": []}
    per_object = {}
    names = _sequence_names(gt_root, split)
    for seq in names:
        j, f = _davis_sequence(results_dir, gt_root, seq)
        for k, (j_k, f_k) in enumerate(zip(j, f, strict=True), 1):
            stats["J"].append(db_statistics(j_k))
            stats["F"].append(db_statistics(f_k))
            per_object[f"{seq}_{k}"] = {"J-Mean": stats["J"][-1][0], "F-Mean": stats["F"][-1][0]}
    # one 1-D mean per column, summed in the order (and pairwise blocks) of the official np.mean
    means = {f"{m}-{s}": float(np.mean(np.array([row[i] for row in rows])))
             for m, rows in stats.items() for i, s in enumerate(_MEASURES)}
    out = {"J&F-Mean": (means["J-Mean"] + means["F-Mean"]) / 2.0}
    out.update({k: _finite(v) for k, v in means.items()})
    return {**out, "num_sequences": len(names), "num_objects": len(per_object),
            "sequences": per_object}


# --------------------------------------------------------------- MeViS, Ref-YouTube-VOS


def _expression_scores(results_dir: str, sample) -> tuple[float, float]:
    """Mean J and F over all frames of one expression (``sample`` a :class:`MaskSample`)."""
    try:
        masks = sample.masks() if callable(sample.masks) else sample.masks
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"--gt {err}") from None
    gt = np.asarray(masks, dtype=bool).any(0)
    vid, eid = sample.name.split("/", 1)
    names = [os.path.splitext(os.path.basename(p))[0] for p in sample.frames]
    paths = [os.path.join(results_dir, vid, eid, f"{n}.png") for n in names]
    pred = _read_masks(paths, gt.shape[1:], f"video {vid} expression {eid}") != 0
    j, f = _j_f(pred, gt)
    return float(j.mean()), float(f.mean())


def _read_referring(gt_root: str, split: str, layout: str) -> list:
    from tpo.datamodules.formats import mevis, refytvos

    reader = mevis if layout == "mevis" else refytvos
    try:
        samples = reader.read(gt_root, split)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"--gt {err}") from None
    if not samples:
        raise ValueError(f"--gt {gt_root}: no {layout} expression in split {split!r}")
    return samples


def _eval_referring(results_dir: str, gt_root: str, split: str, layout: str) -> dict:
    samples = _read_referring(gt_root, split, layout)
    per_expression, missing = {}, []
    for sample in samples:
        vid = sample.name.split("/", 1)[0]
        if os.path.isdir(os.path.join(results_dir, vid)):
            j, f = _expression_scores(results_dir, sample)
        else:
            j = f = 0.0
            if vid not in missing:
                missing.append(vid)
        per_expression[sample.name.replace("/", "_", 1)] = {"J": j, "F": f}
    j_mean = float(np.mean([v["J"] for v in per_expression.values()]))
    f_mean = float(np.mean([v["F"] for v in per_expression.values()]))
    return {"J&F-Mean": (j_mean + f_mean) / 2, "J-Mean": j_mean, "F-Mean": f_mean,
            "num_expressions": len(per_expression), "missing": missing,
            "expressions": per_expression}


def eval_davis(results_dir: str | os.PathLike, gt_root: str | os.PathLike, *,
               split: str | None = None, layout: str | None = None) -> dict:
    """J&F of a results folder of PNG masks against a DAVIS 2017, MeViS or Ref-YouTube-VOS root
    (see the module docstring for each protocol).

    Args:
        split: ``ImageSets/2017/<split>.txt`` (DAVIS, default ``val``) or the split folder
            (MeViS ``valid_u``, Ref-YouTube-VOS ``valid`` by default).
        layout: ``davis``, ``mevis`` or ``refytvos``; ``None`` detects it (:func:`detect_layout`).

    Returns:
        DAVIS: ``{"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay",
        "num_sequences", "num_objects", "sequences": {"<seq>_<k>": {"J-Mean", "F-Mean"}}}``;
        MeViS / Ref-YouTube-VOS: ``{"J&F-Mean", "J-Mean", "F-Mean", "num_expressions",
        "missing": [vid], "expressions": {"<vid>_<eid>": {"J", "F"}}}``. A NaN decay is ``None``.

    Raises:
        FileNotFoundError / ValueError: naming the file (``--results ...`` / ``--gt ...``) and
            what was expected: a missing or unreadable result mask, one of another size, an
            object id above the sequence's objects, a malformed ground truth.
    """
    results_dir, gt_root = os.fspath(results_dir), os.fspath(gt_root)
    if not os.path.isdir(results_dir):
        raise FileNotFoundError(f"--results {results_dir}: no such results folder")
    layout = layout or detect_layout(gt_root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {list(LAYOUTS)}")
    if not os.path.isdir(gt_root):
        raise FileNotFoundError(f"--gt {gt_root}: no such ground-truth root folder")
    split = split or DEFAULT_SPLITS[layout]
    if layout == "davis":
        return _eval_davis2017(results_dir, gt_root, split)
    return _eval_referring(results_dir, gt_root, split, layout)

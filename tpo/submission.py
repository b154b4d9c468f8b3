"""Submission files in each benchmark's official layout, from predictions in boundary units.

=============  ===========================================================================
benchmark      layout written at ``out`` (what reads it)
=============  ===========================================================================
qvhighlights   ``out`` jsonl, one row per query: ``{"qid", "query", "vid",
               "pred_relevant_windows": [[start_s, end_s, score], ...], "pred_saliency_scores":
               [one per 2-s clip]}`` (Moment-DETR ``standalone_eval``, ``tpo eval qvhighlights``)
charades       ``out`` jsonl, the same rows without saliency (``tpo eval charades``)
refcoco        ``out`` JSON ``[{"ref_id", "box": [x1, y1, x2, y2]}]`` pixels (``tpo eval refcoco``)
davis          ``out/<sequence>/<frame>.png``: one palette label map per frame, object ``k`` =
               palette index ``k`` (DAVIS palette; davis2017-evaluation, ``tpo eval davis``)
refytvos       ``out/Annotations/<video>/<exp_id>/<frame>.png``: binary masks, 0 / 255 grey
               (``tpo eval davis --layout refytvos --results out/Annotations``)
mevis          ``out/<video>/<exp_id>/<frame>.png``: binary masks, 0 / 255 grey (MeViS'
               ``tools/eval_mevis.py``, ``tpo eval davis --layout mevis``)
got10k         ``out/<sequence>/<sequence>_001.txt`` (``x,y,w,h`` pixels per frame, commas) and
               ``<sequence>_time.txt`` (seconds per frame), as the GOT-10k toolkit records them
               (``tpo eval got10k``)
lasot          ``out/<sequence>.txt``, one ``x,y,w,h`` line per frame (``tpo eval lasot``)
=============  ===========================================================================

:func:`zip_submission` packs a submission as the servers take it: DAVIS and GOT-10k with the
sequence folders at the top of the zip, MeViS with the video folders at the top (its README's
``sample_submission_valid.zip``), Ref-YouTube-VOS under a top ``Annotations/`` folder, a file
benchmark's one file at the top.

Entry points, all going through :class:`Submission` (``add(meta, prediction)``, ``close()``):

- the writers (``write_moments``, ``write_refcoco``, ``write_davis_sequence``,
  ``write_refytvos_expression``, ``write_mevis_expression``, ``write_got10k_sequence``,
  ``write_lasot_sequence``) for predictions already in hand;
- :func:`write_submission` for :class:`~tpo.Answer` s of a :class:`~tpo.Predictor`;
- :class:`SubmissionWriter`, a Lightning callback for ``tpo predict``::

    tpo predict --config cfg.yaml --trainer.callbacks+=tpo.submission.SubmissionWriter \\
        --trainer.callbacks.benchmark=got10k --trainer.callbacks.out=results/tpo

A sample is described by a ``meta`` mapping (the datasets' ``batch["meta"]`` rows, or
:func:`sample_meta` of a sample record): ``id`` (qid, ref_id, sequence name, or
``<video>/<exp_id>`` for Ref-YouTube-VOS and MeViS), and where the layout needs them ``vid``,
``query``, ``duration`` (s), ``timestamps`` (s of the frames read), ``frame_indices`` (which
frames of the sequence the predictions are), ``frame_names`` (every frame of the sequence),
``frame_size`` ((H, W) px) and ``seconds`` (time spent predicting the sample). Every file is
written atomically (a temporary sibling renamed into place); bad input is a ``ValueError``
naming the sample and what was expected, and no sample is left out.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from tpo.datamodules.datasets import frame_names
from tpo.datamodules.formats._frames import write_label_map
from tpo.datamodules.samples import MaskSample, MomentSample, RefSample, TrackSample
from tpo.io import atomic_path, write_text_atomic
from tpo.metrics.qvhighlights import CLIP_SECONDS

__all__ = ["BENCHMARKS", "Benchmark", "Submission", "SubmissionWriter", "check_new_output", "clip_saliency",
           "get_benchmark", "moment_row", "refcoco_row", "sample_meta", "write_davis_sequence",
           "write_got10k_sequence", "write_lasot_sequence", "write_mevis_expression", "write_moments",
           "write_refcoco", "write_refytvos_expression", "write_submission", "zip_submission"]


# ---------------------------------------------------------------------------- checks
def _array(value: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _identifier(value: Any, where: str, what: str) -> str | int:
    """A JSON-ready id (``str`` or ``int``), or a ``ValueError`` naming ``where``."""
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"{where}: {what}: expected a string or integer id, got {value!r}")
    return value


def _finite(values: np.ndarray, where: str, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0].tolist()
        raise ValueError(f"{where}: {what} holds a non-finite value at {bad}; expected finite numbers")
    return values


def _windows(value: Any, where: str) -> np.ndarray:
    """``(K, 3)`` ``[start_s, end_s, score]`` rows, ``K >= 1``, finite, ``start <= end``."""
    windows = _array(value)
    if windows.ndim != 2 or windows.shape[1] != 3 or len(windows) == 0:
        raise ValueError(f"{where}: windows: expected (K, 3) [start_s, end_s, score] rows with K >= 1, "
                         f"got shape {windows.shape}")
    windows = _finite(windows, where, "windows")
    if (windows[:, 0] > windows[:, 1]).any():
        row = int(np.flatnonzero(windows[:, 0] > windows[:, 1])[0])
        raise ValueError(f"{where}: window {row} {windows[row, :2].tolist()} has start > end")
    return windows


def _boxes(value: Any, num_frames: int, where: str) -> np.ndarray:
    """``(num_frames, 4)`` finite ``x, y, w, h`` boxes with ``w, h >= 0``."""
    boxes = _array(value)
    if boxes.shape != (num_frames, 4):
        raise ValueError(f"{where}: boxes of shape {boxes.shape} for {num_frames} frames; expected one "
                         f"x,y,w,h box per frame, ({num_frames}, 4)")
    boxes = _finite(boxes, where, "boxes")
    if (boxes[:, 2:] < 0).any():
        frame = int(np.flatnonzero((boxes[:, 2:] < 0).any(1))[0])
        raise ValueError(f"{where}: frame {frame} box {boxes[frame].tolist()} has a negative width or height")
    return boxes


def _masks(value: Any, num_frames: int, where: str, frame_size: Sequence[int] | None) -> np.ndarray:
    """``(num_frames, H, W)`` bool masks, of ``frame_size`` when given."""
    masks = _array(value)
    if masks.dtype != np.bool_:
        raise ValueError(f"{where}: masks are {masks.dtype}; expected bool masks (threshold logits first)")
    if masks.ndim != 3 or len(masks) != num_frames or 0 in masks.shape:
        raise ValueError(f"{where}: masks of shape {masks.shape} for {num_frames} frames; expected "
                         f"({num_frames}, H, W), one mask per frame")
    if frame_size is not None and masks.shape[1:] != tuple(int(s) for s in frame_size):
        raise ValueError(f"{where}: masks are {masks.shape[2]}x{masks.shape[1]} px but the frames are "
                         f"{frame_size[1]}x{frame_size[0]}; expected masks at the frame size")
    return masks


def _frame_names(names: Sequence[str], where: str) -> list[str]:
    names = [str(n) for n in names]
    bad = any(not n or "/" in n or n.startswith(".") for n in names)
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"{where}: frame_names: expected distinct file names without '/', one per "
                         f"frame, got {names[:5]}{'...' if len(names) > 5 else ''}")
    return names


def _folder_name(value: Any, where: str, what: str) -> str:
    name = str(_identifier(value, where, what))
    if "/" in name or name.startswith("."):
        raise ValueError(f"{where}: {what} {name!r}: expected a folder name without '/' or a leading '.'")
    return name


# ---------------------------------------------------------------------------- atomic folders
@contextmanager
def _atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary sibling folder to fill; it replaces ``path`` (and any folder already there) when
    the block ends without error, and is deleted otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_binary_png(path: Path, mask: np.ndarray) -> None:
    """An ``(H, W)`` bool mask as an 8-bit grey PNG, 255 on the object (ReferFormer's layout)."""
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)


# ---------------------------------------------------------------------------- file writers
def moment_row(qid: str | int, vid: str, query: str, windows: Any, saliency: Any = None) -> dict:
    """One QVHighlights / Charades-STA prediction row.

    Args:
        qid, vid, query: the query's identifiers, as in the annotation file.
        windows: ``(K, 3)`` ``[start_s, end_s, score]``, best first (``pred_relevant_windows``).
        saliency: ``(C,)`` one score per 2-s clip of the video (``pred_saliency_scores``), or
            ``None`` for a row without it (Charades-STA).
    """
    where = f"qid {qid!r}"
    vid = str(_identifier(vid, where, "vid"))
    row = {"qid": _identifier(qid, where, "qid"), "query": str(query), "vid": vid,
           "pred_relevant_windows": _windows(windows, where).tolist()}
    if saliency is not None:
        scores = _array(saliency)
        if scores.ndim != 1:
            raise ValueError(f"{where}: saliency of shape {scores.shape}; expected (C,), one score per clip")
        row["pred_saliency_scores"] = _finite(scores, where, "saliency").tolist()
    return row


def _unique_ids(rows: Sequence[Mapping], key: str, what: str) -> None:
    seen: set[str] = set()
    for row in rows:
        if str(row[key]) in seen:
            raise ValueError(f"{what}: {key} {row[key]!r} appears twice; expected one prediction per {key}")
        seen.add(str(row[key]))


def write_moments(path: str | os.PathLike, rows: Iterable[Mapping]) -> Path:
    """Write :func:`moment_row` rows as jsonl (QVHighlights / Charades-STA submission)."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"{os.fspath(path)}: no prediction rows to write")
    _unique_ids(rows, "qid", os.fspath(path))
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
    return Path(path)


def refcoco_row(ref_id: str | int, box_xyxy: Any) -> dict:
    """One RefCOCO prediction: ``{"ref_id", "box": [x1, y1, x2, y2]}`` pixels of the image."""
    where = f"ref_id {ref_id!r}"
    box = _array(box_xyxy)
    box = box.reshape(-1) if box.size == 4 else box
    if box.shape != (4,):
        raise ValueError(f"{where}: box of shape {box.shape}; expected one [x1, y1, x2, y2] box")
    box = _finite(box, where, "box")
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"{where}: box {box.tolist()}: expected x1 <= x2 and y1 <= y2")
    return {"ref_id": _identifier(ref_id, where, "ref_id"), "box": box.tolist()}


def write_refcoco(path: str | os.PathLike, rows: Iterable[Mapping]) -> Path:
    """Write :func:`refcoco_row` rows as one JSON list."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"{os.fspath(path)}: no prediction rows to write")
    _unique_ids(rows, "ref_id", os.fspath(path))
    write_text_atomic(path, json.dumps(rows))
    return Path(path)


# ---------------------------------------------------------------------------- folder writers
def write_davis_sequence(root: str | os.PathLike, sequence: str, masks: Any, frame_names: Sequence[str], *,
                         object_ids: Sequence[int] | None = None,
                         frame_size: Sequence[int] | None = None) -> Path:
    """Write ``root/<sequence>/<frame>.png``: per frame one palette label map (DAVIS palette),
    0 background and object ``k`` as index ``k``, as the DAVIS 2017 evaluation reads results.

    Args:
        masks: ``(T, H, W)`` bool (one object, id 1) or ``(K, T, H, W)`` bool, one track per
            object of ``object_ids``; where objects overlap the one listed last is written.
        frame_names: the sequence's ``T`` frame names (``00000``, ...), without extension.
        object_ids: the ``K`` object ids, 1..254 (default 1..K).
        frame_size: ``(H, W)`` the masks must have, when given.
    """
    where = f"sequence {sequence!r}"
    names = _frame_names(frame_names, where)
    stack = _array(masks)
    stack = stack[None] if stack.ndim == 3 else stack
    if stack.ndim != 4:
        raise ValueError(f"{where}: masks of shape {stack.shape}; expected (T, H, W) or (K, T, H, W) bool")
    tracks = [_masks(m, len(names), f"{where} object {k}", frame_size) for k, m in enumerate(stack)]
    ids = list(range(1, len(tracks) + 1)) if object_ids is None else [int(i) for i in object_ids]
    if len(ids) != len(tracks) or len(set(ids)) != len(ids) or not all(1 <= i <= 254 for i in ids):
        raise ValueError(f"{where}: object_ids {ids} for {len(tracks)} mask tracks; expected {len(tracks)} "
                         "distinct ids in 1..254")
    labels = np.zeros(tracks[0].shape, dtype=np.uint8)
    for object_id, track in zip(ids, tracks, strict=True):
        labels[track] = object_id
    target = Path(root) / _folder_name(sequence, where, "sequence")
    with _atomic_folder(target) as tmp:
        for name, label in zip(names, labels, strict=True):
            write_label_map(tmp / f"{name}.png", label)
    return target


def _write_expression(base: Path, video: str, exp_id: str | int, masks: Any, frame_names: Sequence[str],
                      frame_size: Sequence[int] | None) -> Path:
    """Binary PNGs ``base/<video>/<exp_id>/<frame>.png``."""
    where = f"video {video!r} expression {exp_id!r}"
    folder = base / _folder_name(video, where, "video") / _folder_name(exp_id, where, "exp_id")
    names = _frame_names(frame_names, where)
    masks = _masks(masks, len(names), where, frame_size)
    with _atomic_folder(folder) as tmp:
        for name, mask in zip(names, masks, strict=True):
            _write_binary_png(tmp / f"{name}.png", mask)
    return folder


def write_refytvos_expression(root: str | os.PathLike, video: str, exp_id: str | int, masks: Any,
                              frame_names: Sequence[str], *, frame_size: Sequence[int] | None = None) -> Path:
    """Write ``root/Annotations/<video>/<exp_id>/<frame>.png`` binary masks (0 / 255 grey), the
    Ref-YouTube-VOS server's layout; ``masks (T, H, W)`` bool, one per name of ``frame_names``."""
    return _write_expression(Path(root, "Annotations"), video, exp_id, masks, frame_names, frame_size)


def write_mevis_expression(root: str | os.PathLike, video: str, exp_id: str | int, masks: Any,
                           frame_names: Sequence[str], *, frame_size: Sequence[int] | None = None) -> Path:
    """Write ``root/<video>/<exp_id>/<frame>.png`` binary masks (0 / 255 grey), as MeViS' tools
    save and read them; ``masks (T, H, W)`` bool, one per name of ``frame_names``."""
    return _write_expression(Path(root), video, exp_id, masks, frame_names, frame_size)


def write_got10k_sequence(root: str | os.PathLike, sequence: str, boxes_xywh: Any, num_frames: int, *,
                          seconds_per_frame: float | Sequence[float] | None = None) -> Path:
    """Write ``root/<sequence>/<sequence>_001.txt`` (one ``x,y,w,h`` line per frame, pixels,
    ``%.3f``) and, when ``seconds_per_frame`` is given, ``<sequence>_time.txt`` (one time per
    frame, ``%.8f``), as the GOT-10k toolkit records a run.

    Args:
        boxes_xywh: ``(num_frames, 4)`` pixels.
        num_frames: the sequence's frame count.
        seconds_per_frame: a time for every frame, or one for all.
    """
    where = f"sequence {sequence!r}"
    boxes = _boxes(boxes_xywh, num_frames, where)
    name = _folder_name(sequence, where, "sequence")
    times = None
    if seconds_per_frame is not None:
        times = _finite(np.broadcast_to(np.asarray(seconds_per_frame, dtype=np.float64), (num_frames,)),
                        where, "seconds_per_frame")
        if (times < 0).any():
            raise ValueError(f"{where}: seconds_per_frame must be >= 0")
    target = Path(root) / name
    with _atomic_folder(target) as tmp:
        np.savetxt(tmp / f"{name}_001.txt", boxes, fmt="%.3f", delimiter=",")
        if times is not None:
            np.savetxt(tmp / f"{name}_time.txt", times, fmt="%.8f")
    return target


def write_lasot_sequence(root: str | os.PathLike, sequence: str, boxes_xywh: Any, num_frames: int) -> Path:
    """Write ``root/<sequence>.txt``: one ``x,y,w,h`` line per frame (pixels, ``%.3f``), as the
    GOT-10k toolkit's LaSOT experiment records a run; ``boxes_xywh (num_frames, 4)``."""
    where = f"sequence {sequence!r}"
    boxes = _boxes(boxes_xywh, num_frames, where)
    path = Path(root) / f"{_folder_name(sequence, where, 'sequence')}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savetxt(tmp, boxes, fmt="%.3f", delimiter=",")
    return path


# ---------------------------------------------------------------------------- predictions -> writers
def clip_saliency(scores: Any, timestamps: Any, duration: float,
                  clip_seconds: float = CLIP_SECONDS) -> np.ndarray:
    """Saliency per ``clip_seconds`` clip of a ``duration`` s video (``int(duration / clip_seconds)``
    clips, as Moment-DETR counts them) from ``scores (T,)`` of the frames read at ``timestamps
    (T,)`` s: each clip takes the score of the frame read nearest its centre."""
    scores, timestamps = _array(scores).astype(np.float64), _array(timestamps).astype(np.float64)
    if scores.ndim != 1 or scores.shape != timestamps.shape or len(scores) == 0:
        raise ValueError(f"saliency of shape {scores.shape} for timestamps of shape {timestamps.shape}; "
                         "expected one score per frame read, (T,) each")
    centres = (np.arange(int(float(duration) / clip_seconds)) + 0.5) * clip_seconds
    return scores[np.abs(centres[:, None] - timestamps[None]).argmin(1)]


def _need(meta: Mapping, key: str, where: str, why: str) -> Any:
    if meta.get(key) is None:
        raise ValueError(f"{where}: meta has no {key!r} ({why})")
    return meta[key]


def _sequence_length(meta: Mapping, predicted: int, where: str) -> int:
    """Frames of the sample's sequence: ``len(frame_names)``, else ``max(frame_indices) + 1``
    (uniform sampling reads the last frame), else the ``predicted`` count."""
    if meta.get("frame_names") is not None:
        return len(_frame_names(meta["frame_names"], where))
    if meta.get("frame_indices") is not None and len(meta["frame_indices"]):
        return int(np.max(_array(meta["frame_indices"]))) + 1
    return predicted


def _every_frame(values: Any, meta: Mapping, num_frames: int, where: str) -> np.ndarray:
    """One value per frame of the sequence from ``values (T, ...)`` at ``meta["frame_indices"]``
    (default ``0..T-1``; a frame read twice keeps its first value); every frame must be read."""
    values = _array(values)
    indices = meta.get("frame_indices")
    indices = np.arange(len(values)) if indices is None else _array(indices).astype(np.int64).reshape(-1)
    if len(indices) != len(values):
        raise ValueError(f"{where}: {len(values)} predicted frames but {len(indices)} frame_indices")
    if len(indices) and (indices.min() < 0 or indices.max() >= num_frames):
        raise ValueError(f"{where}: frame_indices {indices.tolist()[:8]} outside the {num_frames} frames of "
                         "the sequence")
    frames, first = np.unique(indices, return_index=True)
    if not np.array_equal(frames, np.arange(num_frames)):
        missing = sorted(set(range(num_frames)) - set(frames.tolist()))
        raise ValueError(f"{where}: predictions cover frames {frames.tolist()[:8]} of a {num_frames}-frame "
                         f"sequence (missing {missing[:8]}); a submission needs every frame: read every "
                         "frame (num_frames >= the sequence length, uniform sampling) or pass frame_indices")
    return values[first]


def _add_moment(out: Path, meta: Mapping, prediction: Any, where: str) -> dict:
    why = "the row's identifiers"
    return moment_row(meta["id"], _need(meta, "vid", where, why), _need(meta, "query", where, why),
                      prediction.windows)


def _add_moment_saliency(out: Path, meta: Mapping, prediction: Any, where: str) -> dict:
    why = "saliency goes on the video's 2-s clips"
    duration, timestamps = _need(meta, "duration", where, why), _need(meta, "timestamps", where, why)
    try:
        saliency = clip_saliency(prediction.saliency, timestamps, duration)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return {**_add_moment(out, meta, prediction, where), "pred_saliency_scores": saliency.tolist()}


def _add_ref(out: Path, meta: Mapping, prediction: Any, where: str) -> dict:
    return refcoco_row(meta["id"], prediction.box_xyxy)


def _mask_frames(meta: Mapping, prediction: Any, where: str, named: bool) -> tuple[np.ndarray, list[str]]:
    """Every frame's mask and the frame names (``%05d`` of the index unless ``named`` requires
    ``meta["frame_names"]``)."""
    if named:
        _need(meta, "frame_names", where, "the PNGs are named after the video's frames")
    n = _sequence_length(meta, len(_array(prediction.masks)), where)
    names = meta["frame_names"] if meta.get("frame_names") is not None else [f"{i:05d}" for i in range(n)]
    return _every_frame(prediction.masks, meta, n, where), list(names)


def _video_expression(meta: Mapping, where: str) -> tuple[str, str]:
    video, sep, exp_id = str(meta["id"]).rpartition("/")
    if not sep or not video or not exp_id:
        raise ValueError(f"{where}: id {meta['id']!r}: expected '<video>/<exp_id>'")
    return video, exp_id


def _add_davis(out: Path, meta: Mapping, prediction: Any, where: str) -> None:
    masks, names = _mask_frames(meta, prediction, where, named=False)
    write_davis_sequence(out, meta["id"], masks, names, frame_size=meta.get("frame_size"))


def _add_refytvos(out: Path, meta: Mapping, prediction: Any, where: str) -> None:
    masks, names = _mask_frames(meta, prediction, where, named=True)
    video, exp_id = _video_expression(meta, where)
    write_refytvos_expression(out, video, exp_id, masks, names, frame_size=meta.get("frame_size"))


def _add_mevis(out: Path, meta: Mapping, prediction: Any, where: str) -> None:
    masks, names = _mask_frames(meta, prediction, where, named=True)
    video, exp_id = _video_expression(meta, where)
    write_mevis_expression(out, video, exp_id, masks, names, frame_size=meta.get("frame_size"))


def _track_boxes(meta: Mapping, prediction: Any, where: str) -> np.ndarray:
    n = _sequence_length(meta, len(_array(prediction.boxes_xywh)), where)
    return _every_frame(prediction.boxes_xywh, meta, n, where)


def _add_got10k(out: Path, meta: Mapping, prediction: Any, where: str) -> None:
    boxes = _track_boxes(meta, prediction, where)
    seconds = meta.get("seconds")
    write_got10k_sequence(out, meta["id"], boxes, len(boxes),
                          seconds_per_frame=None if seconds is None else float(seconds) / len(boxes))


def _add_lasot(out: Path, meta: Mapping, prediction: Any, where: str) -> None:
    boxes = _track_boxes(meta, prediction, where)
    write_lasot_sequence(out, meta["id"], boxes, len(boxes))


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's submission layout.

    Attributes:
        name: the registry key.
        fields: the prediction attributes it reads (``windows``, ``box_xyxy``, ...).
        add: ``(out, meta, prediction, where)`` -> the sample's row (file layouts) or ``None``
            after writing the sample's files under ``out`` (folder layouts).
        write_rows: file layouts: writes the rows to ``out``; ``None`` for folder layouts.
    """

    name: str
    fields: tuple[str, ...]
    add: Callable[[Path, Mapping, Any, str], dict | None]
    write_rows: Callable[[str | os.PathLike, Iterable[Mapping]], Path] | None = None

    @property
    def is_folder(self) -> bool:
        return self.write_rows is None


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("qvhighlights", ("windows", "saliency"), _add_moment_saliency, write_moments),
    Benchmark("charades", ("windows",), _add_moment, write_moments),
    Benchmark("refcoco", ("box_xyxy",), _add_ref, write_refcoco),
    Benchmark("davis", ("masks",), _add_davis),
    Benchmark("refytvos", ("masks",), _add_refytvos),
    Benchmark("mevis", ("masks",), _add_mevis),
    Benchmark("got10k", ("boxes_xywh",), _add_got10k),
    Benchmark("lasot", ("boxes_xywh",), _add_lasot),
)}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark: expected one of {sorted(BENCHMARKS)}, got {name!r}")
    return BENCHMARKS[name]


def check_new_output(benchmark: str, out: str | os.PathLike) -> None:
    """A folder layout must start in a new or empty folder (files of an earlier run would mix in);
    a file layout's ``out`` must not be a folder."""
    out, spec = Path(out), get_benchmark(benchmark)
    if spec.is_folder and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out {out}: exists and is not an empty folder; a {benchmark} submission is "
                         "written into a new folder (remove it first)")
    if not spec.is_folder and out.is_dir():
        raise ValueError(f"out {out}: is a folder; a {benchmark} submission is one file")


class Submission:
    """Collects a benchmark's predictions sample by sample and writes them at ``out``.

    Folder layouts write each sample's files when it is added; file layouts keep the rows and
    write them on :meth:`close`. A sample id seen twice, a ``None`` prediction (the model called
    no task) or a prediction without the benchmark's fields is a ``ValueError`` naming the sample.
    """

    def __init__(self, benchmark: str, out: str | os.PathLike) -> None:
        self.benchmark, self.out = get_benchmark(benchmark), Path(out)
        self.rows: list[dict] = []
        self.ids: set[str] = set()

    def add(self, meta: Mapping, prediction: Any) -> None:
        """Add one sample: its ``meta`` (identifiers) and its head prediction (boundary units)."""
        name = self.benchmark.name
        if meta.get("id") is None:
            raise ValueError(f"{name} sample {len(self.ids)}: meta has no 'id'; expected the sample's id")
        where = f"{name} sample {meta['id']!r}"
        if prediction is None:
            raise ValueError(f"{where}: no prediction (the model called no task); a submission needs "
                             "every sample")
        missing = [f for f in self.benchmark.fields if not hasattr(prediction, f)]
        if missing:
            raise ValueError(f"{where}: a {type(prediction).__name__} has no {missing}; {name} takes "
                             f"predictions with {list(self.benchmark.fields)}")
        if str(meta["id"]) in self.ids:
            raise ValueError(f"{where}: predicted twice; expected one prediction per sample")
        row = self.benchmark.add(self.out, meta, prediction, where)
        self.ids.add(str(meta["id"]))
        if row is not None:
            self.rows.append(row)

    def close(self) -> Path:
        """Write the rows (file layouts); returns ``out``."""
        if not self.ids and not self.rows:
            raise ValueError(f"{self.benchmark.name}: no sample was added; nothing to write at {self.out}")
        if not self.benchmark.is_folder:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.benchmark.write_rows(self.out, self.rows)
        return self.out


def zip_submission(out: str | os.PathLike, benchmark: str, zip_path: str | os.PathLike | None = None) -> Path:
    """Zip the submission at ``out`` as ``benchmark``'s server takes it: a folder's contents at the
    top of the zip (see the module docstring), a file as the zip's one member; hidden files (a
    writer's unfinished ``.partial`` folders) are left out.

    Args:
        zip_path: default ``<out>.zip`` for a folder, ``out`` with a ``.zip`` suffix for a file.
    """
    out, spec = Path(out), get_benchmark(benchmark)
    if spec.is_folder:
        files = sorted(p for p in out.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(out).parts))
        names = [p.relative_to(out).as_posix() for p in files]
        default = out.with_name(out.name + ".zip")
    else:
        files = [out] if out.is_file() else []
        names, default = [out.name], out.with_suffix(".zip")
    if not files:
        raise ValueError(f"{out}: no {benchmark} submission files to zip")
    zip_path = Path(zip_path) if zip_path is not None else default
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for file, name in zip(files, names, strict=True):
            archive.write(file, name)
    return zip_path


# ---------------------------------------------------------------------------- predictor answers
_SAMPLE_META: dict[type, Callable[[Any], dict]] = {
    MomentSample: lambda s: {"id": s.qid, "vid": s.vid, "query": s.query, "duration": s.duration},
    RefSample: lambda s: {"id": s.ref_id},
    TrackSample: lambda s: {"id": s.name, "frame_names": frame_names(s.frames)},
    MaskSample: lambda s: {"id": s.name, "frame_names": frame_names(s.frames)},
}


def sample_meta(sample: Mapping | MomentSample | RefSample | TrackSample | MaskSample) -> dict:
    """The ``meta`` identifiers of a sample record (:mod:`tpo.datamodules.samples`, as the format
    readers return them); a mapping is taken as it is."""
    if isinstance(sample, Mapping):
        return dict(sample)
    for kind, to_meta in _SAMPLE_META.items():
        if isinstance(sample, kind):
            return to_meta(sample)
    raise ValueError(f"sample: expected a mapping or one of {[k.__name__ for k in _SAMPLE_META]}, "
                     f"got {type(sample).__name__}")


def write_submission(answers: Sequence[Any], samples: Sequence[Any], *, benchmark: str,
                     out: str | os.PathLike) -> Path:
    """Write :class:`~tpo.Answer` s (``answer.prediction``, the frames' ``answer.timestamps``) as
    ``benchmark``'s submission at ``out``; ``samples[i]`` identifies ``answers[i]`` (a mapping of
    meta keys or a sample record, see :func:`sample_meta`). A track or mask answer covers every
    frame of its sequence in order unless the sample gives ``frame_indices``.

    Raises:
        ValueError: counts that differ, an answer without a task call, or bad predictions or
            identifiers (named by sample id).
    """
    if len(answers) != len(samples):
        raise ValueError(f"answers, samples: {len(answers)} answers for {len(samples)} samples; "
                         "expected one sample per answer")
    check_new_output(benchmark, out)
    submission = Submission(benchmark, out)
    for answer, sample in zip(answers, samples, strict=True):
        meta = sample_meta(sample)
        if meta.get("timestamps") is None and answer.timestamps is not None:
            meta["timestamps"] = answer.timestamps
        submission.add(meta, answer.prediction)
    return submission.close()


# ---------------------------------------------------------------------------- Lightning
def _all_gather(items: list) -> list:
    """Every process's items, in rank order (the items themselves with one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list[list] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, items)
    return [row for part in gathered for row in part]


class SubmissionWriter(BasePredictionWriter):
    """Writes ``tpo predict`` predictions (:meth:`TPOModule.predict_step`) as a benchmark's
    submission at ``out`` (see the module docstring for the layouts).

    Every predicted sample is written (padding repeats of a distributed run are skipped); a
    sample of another task, or one without a prediction, stops the run with a ``ValueError``
    naming it. Each sample's ``meta`` gets ``seconds`` (its share of the batch's predict time,
    for GOT-10k's time file).

    Args:
        benchmark: one of :data:`BENCHMARKS`.
        out: the submission file (qvhighlights, charades: jsonl; refcoco: JSON) or a new folder.
        zip_path: also write the server's zip there (:func:`zip_submission`) at the end.
    """

    def __init__(self, benchmark: str, out: str, zip_path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        get_benchmark(benchmark)
        self.benchmark, self.out, self.zip_path = benchmark, out, zip_path
        self.submission: Submission | None = None
        self._started = 0.0

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        if trainer.is_global_zero:
            check_new_output(self.benchmark, self.out)
        trainer.strategy.barrier()
        self.submission = Submission(self.benchmark, self.out)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        self._started = time.perf_counter()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int) -> None:
        seconds = (time.perf_counter() - self._started) / max(len(prediction), 1)
        for result in prediction:
            meta = dict(result["meta"])
            if meta.get("padding"):
                continue
            meta.setdefault("seconds", seconds)
            self.submission.add(meta, result["prediction"])

    def on_predict_end(self, trainer, pl_module) -> None:
        rows, ids = _all_gather(self.submission.rows), _all_gather(sorted(self.submission.ids))
        trainer.strategy.barrier()
        if not trainer.is_global_zero:
            return
        self.submission.rows, self.submission.ids = rows, set(ids)
        self.submission.close()
        if self.zip_path is not None:
            zip_submission(self.out, self.benchmark, self.zip_path)

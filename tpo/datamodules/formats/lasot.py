"""LaSOT: ``<root>/<class>/<class>-<k>/img/%08d.jpg`` with, beside ``img/``:
``groundtruth.txt`` (one ``x,y,w,h`` line per frame, pixels), ``full_occlusion.txt`` and
``out_of_view.txt`` (one line of comma-separated 0/1 flags per frame) and ``nlp.txt`` (a sentence
describing the target). The target is visible where neither flag is set. 30 fps.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from tpo.datamodules.formats._frames import (
    check_new_folders,
    check_track,
    frame_size,
    remove_folders,
    write_frames,
)
from tpo.datamodules.formats._io import read_boxes, read_lines, read_text
from tpo.datamodules.samples import TrackSample

__all__ = ["FPS", "read", "read_sequence", "write"]

FPS = 30.0


def _flags(path: str, n: int) -> np.ndarray:
    if not os.path.exists(path):
        return np.zeros(n, dtype=bool)
    values = []
    for line_no, line in enumerate(read_lines(path), 1):
        for v in line.split(","):
            if v.strip() not in ("0", "1", ""):
                raise ValueError(f"{path}:{line_no}: flag {v.strip()!r}: expected "
                                 f"comma-separated 0/1 flags, one per frame")
            if v.strip():
                values.append(v.strip() == "1")
    flags = np.array(values, dtype=bool)
    if flags.shape[0] != n:
        raise ValueError(f"{path}: {flags.shape[0]} flags for {n} frames, expected one per frame")
    return flags


def read_sequence(seq_dir: str | os.PathLike) -> TrackSample:
    """The :class:`TrackSample` of one sequence folder ``<class>/<class>-<k>``.

    Raises:
        FileNotFoundError: ``groundtruth.txt``, ``img/`` or its frames missing (named).
        ValueError: naming the file: a malformed line, not one box (and flag) per frame, a
            visible box that is not finite, empty or outside the frame, a target hidden in the
            first frame.
    """
    seq_dir = os.fspath(seq_dir)
    gt_path, img_dir = os.path.join(seq_dir, "groundtruth.txt"), os.path.join(seq_dir, "img")
    if not os.path.exists(gt_path):
        raise FileNotFoundError(f"{gt_path}: LaSOT ground truth not found")
    if not os.path.isdir(img_dir):
        raise FileNotFoundError(f"{img_dir}: LaSOT frame folder not found")
    frames = sorted(os.path.join(img_dir, f) for f in os.listdir(img_dir) if f.endswith(".jpg"))
    if not frames:
        raise FileNotFoundError(f"{img_dir}: no .jpg frames in the LaSOT frame folder")
    boxes = read_boxes(gt_path)
    n = len(frames)
    if boxes.shape[0] != n:
        raise ValueError(f"{gt_path}: {boxes.shape[0]} boxes for {n} frames in {img_dir}; "
                         f"expected one 'x,y,w,h' line per frame")
    hidden = _flags(os.path.join(seq_dir, "full_occlusion.txt"), n) | _flags(
        os.path.join(seq_dir, "out_of_view.txt"), n)
    nlp_path = os.path.join(seq_dir, "nlp.txt")
    description = read_text(nlp_path).strip() if os.path.exists(nlp_path) else None
    name = os.path.basename(seq_dir)
    try:
        return TrackSample(name=name, frames=frames, boxes_xywh=boxes, visible=~hidden, fps=FPS,
                           image_size=frame_size(frames[0]), category=name.rsplit("-", 1)[0],
                           description=description).validate()
    except ValueError as err:
        raise ValueError(f"{gt_path}: {err}") from None


def read(root: str | os.PathLike, sequences: Iterable[str] | str | os.PathLike | None = None
         ) -> list[TrackSample]:
    """Every sequence under ``root`` (``<class>/<seq>``), or those named.

    Args:
        root: the LaSOT root holding the class folders.
        sequences: names like ``"airplane-1"``, or a file of such names one per line (LaSOT's
            ``testing_set.txt``); default all sequences.
    """
    root = os.fspath(root)
    if isinstance(sequences, (str, os.PathLike)):
        with open(sequences) as f:
            sequences = [line.strip() for line in f if line.strip()]
    if sequences is None:
        sequences = sorted(seq for cls in sorted(os.listdir(root))
                           if os.path.isdir(os.path.join(root, cls))
                           for seq in os.listdir(os.path.join(root, cls))
                           if os.path.isdir(os.path.join(root, cls, seq)))
    return [read_sequence(os.path.join(root, seq.rsplit("-", 1)[0], seq)) for seq in sequences]


def write(root: str | os.PathLike, name: str, frames: np.ndarray | list[str],
          boxes_xywh: np.ndarray,
          visible: np.ndarray, description: str | None = None) -> TrackSample:
    """Write a sequence ``<root>/<class>/<name>`` (``name`` is ``<class>-<k>``) in LaSOT's layout.

    Everything is checked before anything is written (the sequence as it would be read back:
    counts, boxes inside the frame, visible in the first frame), and a failure while writing
    removes the sequence folder again, so a rejected sequence never stays behind.

    Args:
        frames: ``(T, H, W, 3)`` uint8, or JPEG files to link (see ``write_frames``).
        boxes_xywh: ``(T, 4)`` pixels (written with 0 where the target is not visible).
        visible: ``(T,)`` bool; hidden frames are written as fully occluded.

    Raises:
        ValueError: naming the sequence: shapes that do not match, boxes the reader would reject,
            or a sequence folder that already exists.
    """
    seq_dir = os.path.join(root, name.rsplit("-", 1)[0], name)
    boxes, visible = check_track(name, frames, boxes_xywh, visible, decimals=2)
    check_new_folders(name, [seq_dir])
    try:
        write_frames(os.path.join(seq_dir, "img"), frames,
                     [f"{i + 1:08d}.jpg" for i in range(len(frames))])
        np.savetxt(os.path.join(seq_dir, "groundtruth.txt"), boxes, fmt="%.2f", delimiter=",")
        flags = ",".join(str(int(not v)) for v in visible)
        with open(os.path.join(seq_dir, "full_occlusion.txt"), "w") as f:
            f.write(flags + "\n")
        with open(os.path.join(seq_dir, "out_of_view.txt"), "w") as f:
            f.write(",".join("0" for _ in visible) + "\n")
        if description is not None:
            with open(os.path.join(seq_dir, "nlp.txt"), "w") as f:
                f.write(description + "\n")
        return read_sequence(seq_dir)
    except BaseException:
        remove_folders([seq_dir], os.path.join(root, name.rsplit("-", 1)[0]))
        raise

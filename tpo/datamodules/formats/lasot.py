"""LaSOT: ``<root>/<class>/<class>-<k>/img/%08d.jpg`` with, beside ``img/``:
``groundtruth.txt`` (one ``x,y,w,h`` line per frame, pixels), ``full_occlusion.txt`` and
``out_of_view.txt`` (one line of comma-separated 0/1 flags per frame) and ``nlp.txt`` (a sentence
describing the target). The target is visible where neither flag is set. 30 fps.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from PIL import Image

from tpo.datamodules.formats._frames import write_frames
from tpo.datamodules.samples import TrackSample

__all__ = ["FPS", "read", "read_sequence", "write"]

FPS = 30.0


def _flags(path: str, n: int) -> np.ndarray:
    if not os.path.exists(path):
        return np.zeros(n, dtype=bool)
    with open(path) as f:
        text = f.read().replace("\n", ",")
    flags = np.array([int(v) for v in text.split(",") if v.strip()], dtype=bool)
    if flags.shape[0] != n:
        raise ValueError(f"{path}: {flags.shape[0]} flags for {n} frames")
    return flags


def read_sequence(seq_dir: str | os.PathLike) -> TrackSample:
    """The :class:`TrackSample` of one sequence folder ``<class>/<class>-<k>``.

    Raises:
        FileNotFoundError: ``groundtruth.txt`` or ``img/`` missing (named).
        ValueError: frame/box count mismatch, or a visible box outside the frame.
    """
    seq_dir = os.fspath(seq_dir)
    gt_path, img_dir = os.path.join(seq_dir, "groundtruth.txt"), os.path.join(seq_dir, "img")
    if not os.path.exists(gt_path):
        raise FileNotFoundError(f"{gt_path}: LaSOT ground truth not found")
    if not os.path.isdir(img_dir):
        raise FileNotFoundError(f"{img_dir}: LaSOT frame folder not found")
    frames = sorted(os.path.join(img_dir, f) for f in os.listdir(img_dir) if f.endswith(".jpg"))
    boxes = np.loadtxt(gt_path, delimiter=",", dtype=np.float64, ndmin=2)
    n = boxes.shape[0]
    hidden = _flags(os.path.join(seq_dir, "full_occlusion.txt"), n) | _flags(
        os.path.join(seq_dir, "out_of_view.txt"), n)
    nlp_path = os.path.join(seq_dir, "nlp.txt")
    description = open(nlp_path).read().strip() if os.path.exists(nlp_path) else None
    with Image.open(frames[0]) as first:
        size = (first.height, first.width)
    name = os.path.basename(seq_dir)
    return TrackSample(name=name, frames=frames, boxes_xywh=boxes, visible=~hidden, fps=FPS,
                       image_size=size, category=name.rsplit("-", 1)[0],
                       description=description).validate()


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

    Args:
        frames: ``(T, H, W, 3)`` uint8, or JPEG files to link (see ``write_frames``).
        boxes_xywh: ``(T, 4)`` pixels (written with 0 where the target is not visible).
        visible: ``(T,)`` bool; hidden frames are written as fully occluded.
    """
    seq_dir = os.path.join(root, name.rsplit("-", 1)[0], name)
    write_frames(os.path.join(seq_dir, "img"), frames,
                 [f"{i + 1:08d}.jpg" for i in range(len(frames))])
    boxes = np.where(np.asarray(visible, bool)[:, None], boxes_xywh, 0)
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

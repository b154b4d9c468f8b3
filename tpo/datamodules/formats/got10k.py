"""GOT-10k: ``<root>/<split>/<seq>/%08d.jpg`` with ``groundtruth.txt`` (``x,y,w,h`` per frame),
``absence.label`` (one 0/1 per line, 1 = target absent), ``cover.label`` (0-8, optional),
``meta_info.ini`` (``object_class: ...``) and ``<root>/<split>/list.txt`` naming the sequences.
10 fps. Test sequences (first-frame box only) are not readable as training samples.
"""

from __future__ import annotations

import os

import numpy as np

from tpo.datamodules.formats._frames import (
    check_new_folders,
    check_track,
    frame_size,
    remove_folders,
    write_frames,
)
from tpo.datamodules.formats._io import read_boxes, read_lines
from tpo.datamodules.samples import TrackSample

__all__ = ["FPS", "read", "read_sequence", "write"]

FPS = 10.0


def _meta(path: str) -> dict[str, str]:
    meta = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    meta[key.strip()] = value.strip()
    return meta


def _absence(path: str, n: int) -> np.ndarray:
    if not os.path.exists(path):
        return np.zeros(n, dtype=bool)
    values = []
    for line_no, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        if line.strip() not in ("0", "1"):
            raise ValueError(f"{path}:{line_no}: expected 0 or 1 (target absent), got {line!r}")
        values.append(line.strip() == "1")
    if len(values) != n:
        raise ValueError(f"{path}: {len(values)} absence flags for {n} frames, expected one per "
                         f"frame")
    return np.array(values, dtype=bool)


def read_sequence(seq_dir: str | os.PathLike) -> TrackSample:
    """The :class:`TrackSample` of one sequence folder.

    Raises:
        FileNotFoundError: ``groundtruth.txt`` or the frames missing (named).
        ValueError: naming the file: a malformed line, counts that differ (e.g. a test sequence
            with only the first box), a visible box that is not finite, empty or outside the
            frame, a target absent from the first frame.
    """
    seq_dir = os.fspath(seq_dir)
    gt_path = os.path.join(seq_dir, "groundtruth.txt")
    if not os.path.exists(gt_path):
        raise FileNotFoundError(f"{gt_path}: GOT-10k ground truth not found")
    frames = sorted(os.path.join(seq_dir, f) for f in os.listdir(seq_dir) if f.endswith(".jpg"))
    if not frames:
        raise FileNotFoundError(f"{seq_dir}: no .jpg frames")
    boxes = read_boxes(gt_path)
    if boxes.shape[0] != len(frames):
        raise ValueError(f"{gt_path}: {boxes.shape[0]} boxes for {len(frames)} frames in "
                         f"{seq_dir}; expected one 'x,y,w,h' line per frame (test sequences, "
                         f"with the first box only, are not training samples)")
    absent = _absence(os.path.join(seq_dir, "absence.label"), len(frames))
    try:
        return TrackSample(name=os.path.basename(seq_dir), frames=frames, boxes_xywh=boxes,
                           visible=~absent, fps=FPS, image_size=frame_size(frames[0]),
                           category=_meta(os.path.join(seq_dir, "meta_info.ini")).get(
                               "object_class")).validate()
    except ValueError as err:
        raise ValueError(f"{gt_path}: {err}") from None


def read(root: str | os.PathLike, split: str = "train") -> list[TrackSample]:
    """The sequences listed in ``<root>/<split>/list.txt`` (all folders when there is none).

    Raises:
        FileNotFoundError: the split folder or a listed sequence missing (named).
    """
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"{split_dir}: GOT-10k split folder not found")
    list_path = os.path.join(split_dir, "list.txt")
    if os.path.exists(list_path):
        names = [line.strip() for line in read_lines(list_path) if line.strip()]
    else:
        names = sorted(d for d in os.listdir(split_dir)
                       if os.path.isdir(os.path.join(split_dir, d)))
    for name in names:
        if not os.path.isdir(os.path.join(split_dir, name)):
            raise FileNotFoundError(f"{os.path.join(split_dir, name)}: sequence listed in "
                                    f"{list_path} not found")
    return [read_sequence(os.path.join(split_dir, name)) for name in names]


def write(root: str | os.PathLike, split: str, name: str, frames: np.ndarray | list[str],
          boxes_xywh: np.ndarray, visible: np.ndarray, category: str | None = None
          ) -> TrackSample:
    """Write one sequence in GOT-10k's layout and append it to ``<root>/<split>/list.txt``.

    ``frames`` are ``(T, H, W, 3)`` uint8, or JPEG files to link (see ``write_frames``).
    Everything is checked first (as the reader will check it); the sequence is listed only once
    it is completely written, and a failure while writing removes its folder again.

    Raises:
        ValueError: naming the sequence: shapes that do not match, boxes the reader would reject,
            or a sequence folder that already exists.
    """
    seq_dir = os.path.join(root, split, name)
    boxes, visible = check_track(name, frames, boxes_xywh, visible, decimals=4)
    check_new_folders(name, [seq_dir])
    try:
        write_frames(seq_dir, frames, [f"{i + 1:08d}.jpg" for i in range(len(frames))])
        np.savetxt(os.path.join(seq_dir, "groundtruth.txt"), boxes, fmt="%.4f", delimiter=",")
        np.savetxt(os.path.join(seq_dir, "absence.label"), (~visible).astype(int), fmt="%d")
        np.savetxt(os.path.join(seq_dir, "cover.label"), np.where(visible, 8, 0), fmt="%d")
        with open(os.path.join(seq_dir, "meta_info.ini"), "w") as f:
            f.write(f"[METAINFO]\nobject_class: {category or 'object'}\n")
        sample = read_sequence(seq_dir)
    except BaseException:
        remove_folders([seq_dir], os.path.join(root, split))
        raise
    list_path = os.path.join(root, split, "list.txt")
    listed = os.path.exists(list_path) and name in {
        line.strip() for line in read_lines(list_path)}
    if not listed:
        with open(list_path, "a") as f:
            f.write(name + "\n")
    return sample

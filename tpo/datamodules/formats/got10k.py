"""GOT-10k: ``<root>/<split>/<seq>/%08d.jpg`` with ``groundtruth.txt`` (``x,y,w,h`` per frame),
``absence.label`` (one 0/1 per line, 1 = target absent), ``cover.label`` (0-8, optional),
``meta_info.ini`` (``object_class: ...``) and ``<root>/<split>/list.txt`` naming the sequences.
10 fps. Test sequences (first-frame box only) are not readable as training samples.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from tpo.datamodules.formats._frames import write_frames
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


def read_sequence(seq_dir: str | os.PathLike) -> TrackSample:
    """The :class:`TrackSample` of one sequence folder.

    Raises:
        FileNotFoundError: ``groundtruth.txt`` missing (named).
        ValueError: counts differ (e.g. a test sequence with only the first box), or a visible
            box lies outside the frame.
    """
    seq_dir = os.fspath(seq_dir)
    gt_path = os.path.join(seq_dir, "groundtruth.txt")
    if not os.path.exists(gt_path):
        raise FileNotFoundError(f"{gt_path}: GOT-10k ground truth not found")
    frames = sorted(os.path.join(seq_dir, f) for f in os.listdir(seq_dir) if f.endswith(".jpg"))
    boxes = np.loadtxt(gt_path, delimiter=",", dtype=np.float64, ndmin=2)
    absence_path = os.path.join(seq_dir, "absence.label")
    absent = (np.loadtxt(absence_path, dtype=np.int64, ndmin=1).astype(bool)
              if os.path.exists(absence_path) else np.zeros(len(boxes), dtype=bool))
    if not frames:
        raise FileNotFoundError(f"{seq_dir}: no .jpg frames")
    with Image.open(frames[0]) as first:
        size = (first.height, first.width)
    return TrackSample(name=os.path.basename(seq_dir), frames=frames, boxes_xywh=boxes,
                       visible=~absent, fps=FPS, image_size=size,
                       category=_meta(os.path.join(seq_dir, "meta_info.ini")).get("object_class")
                       ).validate()


def read(root: str | os.PathLike, split: str = "train") -> list[TrackSample]:
    """The sequences listed in ``<root>/<split>/list.txt`` (all folders when there is none)."""
    split_dir = os.path.join(root, split)
    list_path = os.path.join(split_dir, "list.txt")
    if os.path.exists(list_path):
        with open(list_path) as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = sorted(d for d in os.listdir(split_dir)
                       if os.path.isdir(os.path.join(split_dir, d)))
    return [read_sequence(os.path.join(split_dir, name)) for name in names]


def write(root: str | os.PathLike, split: str, name: str, frames: np.ndarray | list[str],
          boxes_xywh: np.ndarray, visible: np.ndarray, category: str | None = None
          ) -> TrackSample:
    """Write one sequence in GOT-10k's layout and append it to ``<root>/<split>/list.txt``.

    ``frames`` are ``(T, H, W, 3)`` uint8, or JPEG files to link (see ``write_frames``)."""
    seq_dir = os.path.join(root, split, name)
    write_frames(seq_dir, frames, [f"{i + 1:08d}.jpg" for i in range(len(frames))])
    visible = np.asarray(visible, bool)
    np.savetxt(os.path.join(seq_dir, "groundtruth.txt"),
               np.where(visible[:, None], boxes_xywh, 0), fmt="%.4f", delimiter=",")
    np.savetxt(os.path.join(seq_dir, "absence.label"), (~visible).astype(int), fmt="%d")
    np.savetxt(os.path.join(seq_dir, "cover.label"), np.where(visible, 8, 0), fmt="%d")
    with open(os.path.join(seq_dir, "meta_info.ini"), "w") as f:
        f.write(f"[METAINFO]\nobject_class: {category or 'object'}\n")
    with open(os.path.join(root, split, "list.txt"), "a") as f:
        f.write(name + "\n")
    return read_sequence(seq_dir)

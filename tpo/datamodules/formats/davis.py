"""DAVIS-2017 (semi-supervised): ``JPEGImages/<res>/<seq>/%05d.jpg``,
``Annotations/<res>/<seq>/%05d.png`` (palette PNGs: 0 background, k object k, 255 void) and
``ImageSets/2017/<split>.txt``. The objects are those of the first frame's annotation (DAVIS
guarantees every object appears there); an object missing from a later frame gets an empty mask
there. 24 fps.
"""

from __future__ import annotations

import os

import numpy as np

from tpo.datamodules.formats._frames import read_label_map, write_frames, write_label_map
from tpo.datamodules.samples import MaskSample

__all__ = ["FPS", "read", "read_sequence", "write"]

FPS = 24.0


def _load(name: str, annotations: list[str], object_ids: list[int]) -> np.ndarray:
    labels = np.stack([read_label_map(p) for p in annotations])
    return labels[None] == np.asarray(object_ids, dtype=np.uint8)[:, None, None, None]


def read_sequence(root: str | os.PathLike, name: str, resolution: str = "480p", *,
                  lazy: bool = True) -> MaskSample:
    """One sequence as a :class:`MaskSample` with every first-frame object.

    Args:
        lazy: load the masks when first asked (``MaskSample.load_masks``), not now.

    Raises:
        FileNotFoundError: frames or annotations missing (named).
        ValueError: frame and annotation counts differ; no object in the first frame.
    """
    frame_dir = os.path.join(root, "JPEGImages", resolution, name)
    anno_dir = os.path.join(root, "Annotations", resolution, name)
    for folder in (frame_dir, anno_dir):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: DAVIS folder not found")
    frames = sorted(os.path.join(frame_dir, f) for f in os.listdir(frame_dir) if f.endswith(".jpg"))
    annotations = sorted(os.path.join(anno_dir, f) for f in os.listdir(anno_dir)
                         if f.endswith(".png"))
    if len(frames) != len(annotations):
        raise ValueError(f"sample {name}: {len(frames)} frames in {frame_dir} but "
                         f"{len(annotations)} annotations in {anno_dir}")
    first = read_label_map(annotations[0])
    object_ids = [int(i) for i in np.unique(first) if i not in (0, 255)]
    if not object_ids:
        raise ValueError(f"sample {name}: no object in the first annotation {annotations[0]}")
    sample = MaskSample(name=name, frames=frames, object_ids=object_ids, fps=FPS,
                        masks=lambda: _load(name, annotations, object_ids))
    return sample if lazy else sample.validate()


def read(root: str | os.PathLike, split: str = "val", resolution: str = "480p", *,
         lazy: bool = True) -> list[MaskSample]:
    """The sequences of ``ImageSets/2017/<split>.txt``."""
    with open(os.path.join(root, "ImageSets", "2017", f"{split}.txt")) as f:
        names = [line.strip() for line in f if line.strip()]
    return [read_sequence(root, name, resolution, lazy=lazy) for name in names]


def write(root: str | os.PathLike, name: str, frames: np.ndarray, labels: np.ndarray, *,
          split: str = "train", resolution: str = "480p") -> None:
    """Write a sequence in DAVIS' layout and append it to ``ImageSets/2017/<split>.txt``.

    Args:
        frames: ``(T, H, W, 3)`` uint8.
        labels: ``(T, H, W)`` uint8 object ids (0 background).
    """
    names = [f"{i:05d}" for i in range(len(frames))]
    write_frames(os.path.join(root, "JPEGImages", resolution, name), frames,
                 [n + ".jpg" for n in names])
    anno_dir = os.path.join(root, "Annotations", resolution, name)
    os.makedirs(anno_dir, exist_ok=True)
    for label, n in zip(labels, names, strict=True):
        write_label_map(os.path.join(anno_dir, n + ".png"), label)
    os.makedirs(os.path.join(root, "ImageSets", "2017"), exist_ok=True)
    with open(os.path.join(root, "ImageSets", "2017", f"{split}.txt"), "a") as f:
        f.write(name + "\n")

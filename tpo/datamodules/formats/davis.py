"""DAVIS-2017 (semi-supervised): ``JPEGImages/<res>/<seq>/%05d.jpg``,
``Annotations/<res>/<seq>/%05d.png`` (palette PNGs: 0 background, k object k, 255 void) and
``ImageSets/2017/<split>.txt``. The objects are those of the first frame's annotation (DAVIS
guarantees every object appears there); an object missing from a later frame gets an empty mask
there. 24 fps.
"""

from __future__ import annotations

import os

import numpy as np

from tpo.datamodules.formats._frames import (
    check_frames_and_labels,
    check_new_folders,
    frame_size,
    read_label_map,
    read_label_maps,
    remove_folders,
    write_frames,
    write_label_map,
)
from tpo.datamodules.formats._io import read_lines
from tpo.datamodules.samples import MaskSample

__all__ = ["FPS", "read", "read_sequence", "write"]

FPS = 24.0


def _load(name: str, annotations: list[str], object_ids: list[int],
          size: tuple[int, int], first_frame: str) -> np.ndarray:
    try:
        labels = read_label_maps(annotations, size, first_frame)
    except ValueError as err:
        raise ValueError(f"sample {name}: {err}") from err
    return labels[None] == np.asarray(object_ids, dtype=np.uint8)[:, None, None, None]


def read_sequence(root: str | os.PathLike, name: str, resolution: str = "480p", *,
                  lazy: bool = True) -> MaskSample:
    """One sequence as a :class:`MaskSample` with every first-frame object.

    Args:
        lazy: load the masks when first asked (``MaskSample.load_masks``), not now.

    Raises:
        FileNotFoundError: frames or annotations missing (named).
        ValueError: naming the sequence and file: frame and annotation counts differ; no object
            in the first frame's annotation (semi-supervised DAVIS starts from it); an
            annotation of another size than its frame (the first one now, the others on load).
    """
    frame_dir = os.path.join(root, "JPEGImages", resolution, name)
    anno_dir = os.path.join(root, "Annotations", resolution, name)
    for folder in (frame_dir, anno_dir):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: DAVIS folder not found")
    frames = sorted(os.path.join(frame_dir, f) for f in os.listdir(frame_dir) if f.endswith(".jpg"))
    annotations = sorted(os.path.join(anno_dir, f) for f in os.listdir(anno_dir)
                         if f.endswith(".png"))
    if not frames:
        raise FileNotFoundError(f"{frame_dir}: no .jpg frames for DAVIS sequence {name}")
    if len(frames) != len(annotations):
        raise ValueError(f"sample {name}: {len(frames)} frames in {frame_dir} but "
                         f"{len(annotations)} annotations in {anno_dir}")
    size = frame_size(frames[0])
    first = read_label_map(annotations[0])
    if first.shape != size:
        raise ValueError(f"sample {name}: annotation {annotations[0]} is {first.shape[1]}x"
                         f"{first.shape[0]} but its frame {frames[0]} is {size[1]}x{size[0]}; "
                         f"expected masks of the frame size")
    object_ids = [int(i) for i in np.unique(first) if i not in (0, 255)]
    if not object_ids:
        raise ValueError(f"sample {name}: no object in the first annotation {annotations[0]}; "
                         f"expected the first frame to show every object (semi-supervised)")
    sample = MaskSample(name=name, frames=frames, object_ids=object_ids, fps=FPS,
                        masks=lambda: _load(name, annotations, object_ids, size, frames[0]))
    return sample if lazy else sample.validate()


def read(root: str | os.PathLike, split: str = "val", resolution: str = "480p", *,
         lazy: bool = True) -> list[MaskSample]:
    """The sequences of ``ImageSets/2017/<split>.txt``."""
    list_path = os.path.join(root, "ImageSets", "2017", f"{split}.txt")
    names = [line.strip() for line in read_lines(list_path) if line.strip()]
    return [read_sequence(root, name, resolution, lazy=lazy) for name in names]


def write(root: str | os.PathLike, name: str, frames: np.ndarray, labels: np.ndarray, *,
          split: str = "train", resolution: str = "480p") -> None:
    """Write a sequence in DAVIS' layout and append it to ``ImageSets/2017/<split>.txt``.

    Everything is checked first (as the reader will check it); the sequence is listed only once
    it is completely written, and a failure while writing removes its folders again.

    Args:
        frames: ``(T, H, W, 3)`` uint8.
        labels: ``(T, H, W)`` uint8 object ids (0 background, 255 void); every object must be in
            the first frame.

    Raises:
        ValueError: naming the sequence: shapes that do not match, no object in the first frame,
            an object absent from the first frame, or folders of the sequence that already exist.
    """
    frames, labels = check_frames_and_labels(frames, labels, f"sequence {name}")
    if labels.dtype.kind not in "ui" or labels.min() < 0 or labels.max() > 255:
        raise ValueError(f"sequence {name}: labels must be integer object ids in 0..255, got "
                         f"{labels.dtype} in [{labels.min()}, {labels.max()}]")
    first = set(np.unique(labels[0]).tolist()) - {0, 255}
    if not first:
        raise ValueError(f"sequence {name}: no object in the first frame's labels; expected "
                         f"every object in the first frame (semi-supervised DAVIS)")
    later = set(np.unique(labels).tolist()) - {0, 255} - first
    if later:
        raise ValueError(f"sequence {name}: objects {sorted(later)} are absent from the first "
                         f"frame; expected every object in the first frame (semi-supervised "
                         f"DAVIS)")
    frame_dir = os.path.join(root, "JPEGImages", resolution, name)
    anno_dir = os.path.join(root, "Annotations", resolution, name)
    check_new_folders(name, [frame_dir, anno_dir])
    names = [f"{i:05d}" for i in range(len(frames))]
    try:
        write_frames(frame_dir, frames, [n + ".jpg" for n in names])
        os.makedirs(anno_dir, exist_ok=True)
        for label, n in zip(labels, names, strict=True):
            write_label_map(os.path.join(anno_dir, n + ".png"), label)
        read_sequence(root, name, resolution, lazy=False)
    except BaseException:
        remove_folders([frame_dir, anno_dir])
        raise
    os.makedirs(os.path.join(root, "ImageSets", "2017"), exist_ok=True)
    list_path = os.path.join(root, "ImageSets", "2017", f"{split}.txt")
    if not (os.path.exists(list_path) and name in {n.strip() for n in read_lines(list_path)}):
        with open(list_path, "a") as f:
            f.write(name + "\n")

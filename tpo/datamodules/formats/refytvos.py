"""Ref-YouTube-VOS: ``<split>/JPEGImages/<vid>/<frame>.jpg``,
``<split>/Annotations/<vid>/<frame>.png`` (palette PNGs of object ids, as DAVIS) and
``meta_expressions/<split>/meta_expressions.json``:
``{"videos": {vid: {"expressions": {eid: {"exp": str, "obj_id": "k"}}, "frames": [names]}}}``.
Frames are every 5th of a 30 fps video: 6 fps.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tpo.datamodules.formats._frames import read_label_map, write_frames, write_label_map
from tpo.datamodules.samples import MaskSample

__all__ = ["FPS", "read", "write_meta", "write_video"]

FPS = 6.0


def _load(annotations: list[str], obj_id: int) -> np.ndarray:
    return np.stack([read_label_map(p) == obj_id for p in annotations])[None]


def read(root: str | os.PathLike, split: str = "train", *, lazy: bool = True
         ) -> list[MaskSample]:
    """One :class:`MaskSample` per expression (one object, named ``<vid>/<eid>``).

    Args:
        lazy: load the masks when first asked (``MaskSample.load_masks``), not now.

    Raises:
        FileNotFoundError: the meta file, a frame or an annotation is missing (named).
        ValueError: (when not lazy, or on load) the object is empty in every frame.
    """
    meta_path = os.path.join(root, "meta_expressions", split, "meta_expressions.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path}: Ref-YouTube-VOS expressions not found")
    with open(meta_path) as f:
        videos = json.load(f)["videos"]
    samples = []
    for vid, entry in videos.items():
        frames = [os.path.join(root, split, "JPEGImages", vid, f"{n}.jpg") for n in entry["frames"]]
        annotations = [os.path.join(root, split, "Annotations", vid, f"{n}.png")
                       for n in entry["frames"]]
        for path in frames[:1] + annotations[:1]:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: listed in {meta_path} but not found")
        for eid, expression in entry["expressions"].items():
            obj_id = int(expression["obj_id"])
            sample = MaskSample(name=f"{vid}/{eid}", frames=frames, expression=expression["exp"],
                                object_ids=[obj_id], fps=FPS,
                                masks=lambda a=annotations, o=obj_id: _load(a, o))
            samples.append(sample if lazy else sample.validate())
    return samples


def write_video(root: str | os.PathLike, split: str, vid: str, frames: np.ndarray,
                labels: np.ndarray) -> list[str]:
    """Write frames ``(T, H, W, 3)`` uint8 and label maps ``(T, H, W)`` uint8; returns the frame
    names (``00000``, ``00005``, ... as the dataset numbers them)."""
    names = [f"{5 * i:05d}" for i in range(len(frames))]
    write_frames(os.path.join(root, split, "JPEGImages", vid), frames, [n + ".jpg" for n in names])
    anno_dir = os.path.join(root, split, "Annotations", vid)
    os.makedirs(anno_dir, exist_ok=True)
    for label, n in zip(labels, names, strict=True):
        write_label_map(os.path.join(anno_dir, n + ".png"), label)
    return names


def write_meta(root: str | os.PathLike, split: str,
               videos: dict[str, tuple[list[str], dict[str, tuple[str, int]]]]) -> None:
    """Write ``meta_expressions.json`` from
    ``{vid: (frame names, {eid: (expression, obj_id)})}``."""
    folder = os.path.join(root, "meta_expressions", split)
    os.makedirs(folder, exist_ok=True)
    data = {"videos": {vid: {"expressions": {eid: {"exp": exp, "obj_id": str(obj)}
                                             for eid, (exp, obj) in expressions.items()},
                             "frames": names}
                       for vid, (names, expressions) in videos.items()}}
    with open(os.path.join(folder, "meta_expressions.json"), "w") as f:
        json.dump(data, f)

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

from tpo.datamodules.formats._frames import (
    check_frames_and_labels,
    frame_size,
    read_label_maps,
    write_frames,
    write_label_map,
)
from tpo.datamodules.formats._io import check_video_entry, load_json, require
from tpo.datamodules.samples import MaskSample

__all__ = ["FPS", "read", "write_meta", "write_video"]

FPS = 6.0


def _load(annotations: list[str], obj_id: int, first_frame: str) -> np.ndarray:
    return (read_label_maps(annotations, frame_size(first_frame), first_frame) == obj_id)[None]


def read(root: str | os.PathLike, split: str = "train", *, lazy: bool = True
         ) -> list[MaskSample]:
    """One :class:`MaskSample` per expression (one object, named ``<vid>/<eid>``).

    Args:
        lazy: load the masks when first asked (``MaskSample.load_masks``), not now.

    Raises:
        FileNotFoundError: the meta file, a frame or an annotation is missing (named).
        ValueError: naming the file: invalid JSON (line and column), a video or expression
            without its fields, an ``obj_id`` that is not an integer; (when not lazy, or on load)
            the object is empty in every frame, or an annotation of another size than the frames.
    """
    meta_path = os.path.join(root, "meta_expressions", split, "meta_expressions.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path}: Ref-YouTube-VOS expressions not found")
    data = load_json(meta_path)
    require(data, ("videos",), meta_path, "Ref-YouTube-VOS meta expressions")
    if not isinstance(data["videos"], dict):
        raise ValueError(f"{meta_path}: videos: expected an object {{video id: entry}}")
    samples = []
    for vid, entry in data["videos"].items():
        where = f"{meta_path}: video {vid}"
        check_video_entry(entry, where)
        frames = [os.path.join(root, split, "JPEGImages", vid, f"{n}.jpg") for n in entry["frames"]]
        annotations = [os.path.join(root, split, "Annotations", vid, f"{n}.png")
                       for n in entry["frames"]]
        for path in frames[:1] + annotations[:1]:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: listed in {meta_path} but not found")
        for eid, expression in entry["expressions"].items():
            require(expression, ("exp", "obj_id"), f"{where} expression {eid}", "an expression")
            try:
                obj_id = int(expression["obj_id"])
            except (TypeError, ValueError):
                raise ValueError(f"{where} expression {eid}: obj_id "
                                 f"{expression['obj_id']!r}: expected an integer object id "
                                 f"(1..255)") from None
            sample = MaskSample(name=f"{vid}/{eid}", frames=frames, expression=expression["exp"],
                                object_ids=[obj_id], fps=FPS,
                                masks=lambda a=annotations, o=obj_id, f=frames[0]: _load(a, o, f))
            samples.append(sample if lazy else sample.validate())
    return samples


def write_video(root: str | os.PathLike, split: str, vid: str, frames: np.ndarray,
                labels: np.ndarray) -> list[str]:
    """Write frames ``(T, H, W, 3)`` uint8 and label maps ``(T, H, W)`` uint8; returns the frame
    names (``00000``, ``00005``, ... as the dataset numbers them).

    Raises:
        ValueError: naming the video: shapes that do not match (checked before writing).
    """
    frames, labels = check_frames_and_labels(frames, labels, f"video {vid}")
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

"""MeViS: ``<split>/JPEGImages/<vid>/<frame>.jpg``, ``<split>/meta_expressions.json``
(``{"videos": {vid: {"expressions": {eid: {"exp", "obj_id": [...], "anno_id": [...]}},
"frames": [names]}}}``) and ``<split>/mask_dict.json`` (``{anno_id: [RLE or null per frame]}``,
COCO RLE ``{"size": [h, w], "counts": str}``, decoded with pycocotools). An expression may refer to
several objects; a null RLE is an empty mask (the object is absent from that frame).
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
from PIL import Image

from tpo.datamodules.samples import MaskSample

__all__ = ["FPS", "read"]

FPS = 6.0


def _decode(rles: list, size: tuple[int, int], source: str, anno_id: str) -> np.ndarray:
    from pycocotools import mask as mask_utils

    out = np.zeros((len(rles), *size), dtype=bool)
    for t, rle in enumerate(rles):
        if rle is None:
            continue
        if tuple(rle["size"]) != size:
            raise ValueError(f"{source}: anno_id {anno_id} frame {t}: RLE size {rle['size']} "
                             f"differs from the frame size {list(size)}")
        counts = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice
            warnings.simplefilter("ignore", DeprecationWarning)
            out[t] = mask_utils.decode({"size": list(size), "counts": counts}).astype(bool)
    return out


def read(root: str | os.PathLike, split: str = "train", *, lazy: bool = True
         ) -> list[MaskSample]:
    """One :class:`MaskSample` per expression, objects in ``anno_id`` order, named ``<vid>/<eid>``.

    Raises:
        FileNotFoundError: a meta file or the first frame of a video is missing (named).
        ValueError: (when not lazy, or on load) an object is empty in every frame; an RLE's
            size differs from its frames'; an anno_id missing from ``mask_dict.json``.
    """
    split_dir = os.path.join(root, split)
    meta_path = os.path.join(split_dir, "meta_expressions.json")
    mask_path = os.path.join(split_dir, "mask_dict.json")
    for path in (meta_path, mask_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: MeViS annotation file not found")
    with open(meta_path) as f:
        videos = json.load(f)["videos"]
    with open(mask_path) as f:
        mask_dict = json.load(f)
    samples = []
    for vid, entry in videos.items():
        frames = [os.path.join(split_dir, "JPEGImages", vid, f"{n}.jpg") for n in entry["frames"]]
        if not os.path.exists(frames[0]):
            raise FileNotFoundError(f"{frames[0]}: listed in {meta_path} but not found")
        with Image.open(frames[0]) as first:
            size = (first.height, first.width)
        for eid, expression in entry["expressions"].items():
            anno_ids = [str(a) for a in expression["anno_id"]]
            missing = [a for a in anno_ids if a not in mask_dict]
            if missing:
                raise ValueError(f"sample {vid}/{eid}: anno_id {missing} not in {mask_path}")
            rles = [mask_dict[a] for a in anno_ids]
            if any(len(r) != len(frames) for r in rles):
                raise ValueError(f"sample {vid}/{eid}: mask lists of {[len(r) for r in rles]} "
                                 f"frames for {len(frames)} frames")

            def load(rles=rles, anno_ids=anno_ids, size=size) -> np.ndarray:
                return np.stack([_decode(r, size, mask_path, a)
                                 for r, a in zip(rles, anno_ids, strict=True)])

            sample = MaskSample(name=f"{vid}/{eid}", frames=frames, masks=load,
                                expression=expression["exp"],
                                object_ids=[int(o) for o in expression["obj_id"]], fps=FPS)
            samples.append(sample if lazy else sample.validate())
    return samples

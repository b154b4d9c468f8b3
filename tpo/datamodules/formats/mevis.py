"""MeViS: ``<split>/JPEGImages/<vid>/<frame>.jpg``, ``<split>/meta_expressions.json``
(``{"videos": {vid: {"expressions": {eid: {"exp", "obj_id": [...], "anno_id": [...]}},
"frames": [names]}}}``) and ``<split>/mask_dict.json`` (``{anno_id: [RLE or null per frame]}``,
COCO RLE ``{"size": [h, w], "counts": str}``, decoded with pycocotools). An expression may refer to
several objects; a null RLE is an empty mask (the object is absent from that frame).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from tpo.datamodules.formats._frames import frame_size
from tpo.datamodules.formats._io import check_video_entry, load_json, require
from tpo.datamodules.samples import MaskSample

__all__ = ["FPS", "read"]

FPS = 6.0


def _rle_counts(counts: bytes) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``)."""
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("the string ends inside a run length")
            c = counts[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"byte {counts[p]!r} at {p} is not an RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _decode(rles: list, size: tuple[int, int], source: str, anno_id: str) -> np.ndarray:
    from pycocotools import mask as mask_utils

    h, w = size
    out = np.zeros((len(rles), h, w), dtype=bool)
    for t, rle in enumerate(rles):
        if rle is None:
            continue
        where = f"{source}: anno_id {anno_id} frame {t}"
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise ValueError(f"{where}: expected a COCO RLE {{'size': [h, w], 'counts': str}} or "
                             f"null, got {str(rle)[:60]}")
        if list(rle["size"]) != [h, w]:
            raise ValueError(f"{where}: RLE size {rle['size']} differs from the frame size "
                             f"{[h, w]}")
        counts = rle["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            runs = counts
            if not all(isinstance(c, int) and c >= 0 for c in runs):
                raise ValueError(f"{where}: RLE counts must be non-negative integers")
        else:
            counts = counts.encode() if isinstance(counts, str) else counts
            if not isinstance(counts, bytes):
                raise ValueError(f"{where}: RLE counts: expected a string, got "
                                 f"{type(counts).__name__}")
            try:
                runs = _rle_counts(counts)
            except ValueError as err:
                raise ValueError(f"{where}: invalid compressed RLE counts ({err})") from None
            if any(c < 0 for c in runs):
                raise ValueError(f"{where}: invalid compressed RLE counts (a negative run)")
        if sum(runs) != h * w:
            raise ValueError(f"{where}: the RLE covers {sum(runs)} pixels but its size "
                             f"{[h, w]} has {h * w}; expected an RLE of a {w}x{h} mask")
        rle = {"size": [h, w], "counts": counts}
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice
            warnings.simplefilter("ignore", DeprecationWarning)
            if isinstance(counts, list):
                rle = mask_utils.frPyObjects(rle, h, w)
            try:
                out[t] = mask_utils.decode(rle).astype(bool)
            except (ValueError, TypeError) as err:
                raise ValueError(f"{where}: pycocotools cannot decode this RLE ({err})") from None
    return out


def read(root: str | os.PathLike, split: str = "train", *, lazy: bool = True
         ) -> list[MaskSample]:
    """One :class:`MaskSample` per expression, objects in ``anno_id`` order, named ``<vid>/<eid>``.

    Raises:
        FileNotFoundError: a meta file or the first frame of a video is missing (named).
        ValueError: naming the file: invalid JSON (line and column), a video or expression
            without its fields, an anno_id missing from ``mask_dict.json``, mask lists of another
            length than the frames; (when not lazy, or on load, naming the anno_id and frame) an
            RLE whose size or run lengths do not match its frames, an object empty in every
            frame.
    """
    split_dir = os.path.join(root, split)
    meta_path = os.path.join(split_dir, "meta_expressions.json")
    mask_path = os.path.join(split_dir, "mask_dict.json")
    for path in (meta_path, mask_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: MeViS annotation file not found")
    meta = load_json(meta_path)
    require(meta, ("videos",), meta_path, "MeViS meta expressions")
    if not isinstance(meta["videos"], dict):
        raise ValueError(f"{meta_path}: videos: expected an object {{video id: entry}}")
    mask_dict = load_json(mask_path)
    if not isinstance(mask_dict, dict):
        raise ValueError(f"{mask_path}: expected an object {{anno_id: [RLE or null per frame]}}")
    samples = []
    for vid, entry in meta["videos"].items():
        where = f"{meta_path}: video {vid}"
        check_video_entry(entry, where)
        frames = [os.path.join(split_dir, "JPEGImages", vid, f"{n}.jpg") for n in entry["frames"]]
        if not os.path.exists(frames[0]):
            raise FileNotFoundError(f"{frames[0]}: listed in {meta_path} but not found")
        size = frame_size(frames[0])
        for eid, expression in entry["expressions"].items():
            require(expression, ("exp", "obj_id", "anno_id"), f"{where} expression {eid}",
                    "an expression")
            anno_ids = [str(a) for a in expression["anno_id"]]
            missing = [a for a in anno_ids if a not in mask_dict]
            if missing:
                raise ValueError(f"sample {vid}/{eid}: anno_id {missing} not in {mask_path}")
            rles = [mask_dict[a] for a in anno_ids]
            if any(not isinstance(r, list) or len(r) != len(frames) for r in rles):
                raise ValueError(f"sample {vid}/{eid}: mask lists of "
                                 f"{[len(r) if isinstance(r, list) else r for r in rles]} "
                                 f"frames in {mask_path} for {len(frames)} frames")
            try:
                object_ids = [int(o) for o in expression["obj_id"]]
            except (TypeError, ValueError):
                raise ValueError(f"{where} expression {eid}: obj_id {expression['obj_id']!r}: "
                                 f"expected a list of integer object ids") from None

            def load(rles=rles, anno_ids=anno_ids, size=size) -> np.ndarray:
                return np.stack([_decode(r, size, mask_path, a)
                                 for r, a in zip(rles, anno_ids, strict=True)])

            sample = MaskSample(name=f"{vid}/{eid}", frames=frames, masks=load,
                                expression=expression["exp"], object_ids=object_ids, fps=FPS)
            samples.append(sample if lazy else sample.validate())
    return samples

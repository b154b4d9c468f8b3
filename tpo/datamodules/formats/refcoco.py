"""Referring expressions: RefCOCO / RefCOCO+ / RefCOCOg and the flat grounding JSON.

RefCOCO layout (the ``refer`` toolkit's): ``<dataset>/instances.json`` (COCO annotations, read
with pycocotools) and ``<dataset>/refs(unc).p`` (``refs(umd).p`` / ``refs(google).p`` for
RefCOCOg): a pickled list of ``{"ref_id", "ann_id", "image_id", "split", "category_id",
"sentences": [{"sent", "raw", "tokens", "sent_id"}, ...]}``. The box is the COCO annotation's
``bbox`` (``x, y, w, h`` pixels).

Flat JSON (LLaVA-style grounding data): a list of ``{"id", "image", "expression", "bbox":
[x1, y1, x2, y2], "height", "width"}`` with absolute pixels, or ``"bbox"`` normalised to [0, 1]
when the row has ``"normalized": true`` (Shikra/MiniGPT-v2 style).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
from collections.abc import Iterable

from tpo.datamodules.samples import RefSample

__all__ = ["read", "read_flat", "write_flat"]


def read(refs_path: str | os.PathLike, instances_path: str | os.PathLike,
         image_dir: str | os.PathLike, *, split: str | None = None) -> list[RefSample]:
    """One :class:`RefSample` per sentence of every ref (of ``split`` when given).

    Raises:
        ValueError: a ref whose annotation is missing or whose box lies outside its image.
    """
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(os.fspath(instances_path))
    with open(refs_path, "rb") as f:
        refs = pickle.load(f)
    samples = []
    for ref in refs:
        if split is not None and ref["split"] != split:
            continue
        if ref["ann_id"] not in coco.anns:
            raise ValueError(f"{refs_path}: ref {ref['ref_id']} names annotation {ref['ann_id']}, "
                             f"absent from {instances_path}")
        image = coco.imgs[ref["image_id"]]
        x, y, w, h = coco.anns[ref["ann_id"]]["bbox"]
        for sentence in ref["sentences"]:
            samples.append(RefSample(
                image=os.path.join(image_dir, image["file_name"]), expression=sentence["sent"],
                box_xyxy=[x, y, x + w, y + h], image_size=(image["height"], image["width"]),
                ref_id=f"{ref['ref_id']}/{sentence['sent_id']}").validate())
    return samples


def read_flat(path: str | os.PathLike, image_root: str | os.PathLike = "") -> list[RefSample]:
    """:class:`RefSample` rows from a flat grounding JSON (see the module docstring)."""
    with open(path) as f:
        rows = json.load(f)
    samples = []
    for i, row in enumerate(rows):
        box = [float(v) for v in row["bbox"]]
        size = (int(row["height"]), int(row["width"])) if "height" in row else None
        if row.get("normalized"):
            if size is None:
                raise ValueError(f"{path}: row {i} has a normalised bbox but no height/width")
            box = [box[0] * size[1], box[1] * size[0], box[2] * size[1], box[3] * size[0]]
        samples.append(RefSample(image=os.path.join(image_root, row["image"]),
                                 expression=row["expression"], box_xyxy=box, image_size=size,
                                 ref_id=row.get("id", i)).validate())
    return samples


def write_flat(path: str | os.PathLike, samples: Iterable[RefSample],
               image_root: str | os.PathLike = "") -> None:
    """Write samples as flat grounding JSON (absolute ``xyxy`` pixels, images relative to
    ``image_root``)."""
    rows = []
    for s in samples:
        row = {"id": s.ref_id, "image": os.path.relpath(s.image, image_root) if image_root
               else s.image, "expression": s.expression, "bbox": s.box_xyxy.tolist()}
        if s.image_size is not None:
            row["height"], row["width"] = s.image_size
        rows.append(row)
    with open(path, "w") as f:
        json.dump(rows, f)

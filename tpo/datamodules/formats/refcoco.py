"""Referring expressions: RefCOCO / RefCOCO+ / RefCOCOg and the flat grounding JSON.

RefCOCO layout (the ``refer`` toolkit's): ``<dataset>/instances.json`` (COCO annotations, read
with pycocotools) and ``<dataset>/refs(unc).p`` (``refs(umd).p`` / ``refs(google).p`` for
RefCOCOg): a pickled list of ``{"ref_id", "ann_id", "image_id", "split", "category_id",
"sentences": [{"sent", "raw", "tokens", "sent_id"}, ...]}``. The box is the COCO annotation's
``bbox`` (``x, y, w, h`` pixels).

Flat JSON (LLaVA-style grounding data): a list of ``{"id", "image", "expression", "bbox":
[x1, y1, x2, y2], "height", "width"}`` with absolute pixels, or ``"bbox"`` normalised to [0, 1]
when the row has ``"normalized": true`` (Shikra/MiniGPT-v2 style); ``.json.gz`` is read as well.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
from collections.abc import Iterable

from tpo.datamodules.formats._io import as_box, as_finite, load_json, require
from tpo.datamodules.samples import RefSample

__all__ = ["read", "read_flat", "write_flat"]


def _load_refs(refs_path: str | os.PathLike) -> list:
    if not os.path.exists(refs_path):
        raise FileNotFoundError(f"{refs_path}: refs pickle not found")
    try:
        with open(refs_path, "rb") as f:
            refs = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
            TypeError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{refs_path}: not a readable refs pickle ({type(err).__name__}: "
                         f"{err}); expected the refer toolkit's pickled list of refs") from err
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path}: expected a pickled list of refs, got "
                         f"{type(refs).__name__}")
    return refs


def _load_coco(instances_path: str | os.PathLike):
    from pycocotools.coco import COCO

    dataset = load_json(instances_path)
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list) or \
            not isinstance(dataset.get("annotations"), list):
        raise ValueError(f"{instances_path}: expected COCO instances (a JSON object with lists "
                         f"'images' and 'annotations')")
    for key, fields in (("images", ("id", "file_name", "height", "width")),
                        ("annotations", ("id", "image_id", "bbox"))):
        for k, item in enumerate(dataset[key]):
            require(item, fields, f"{instances_path}: {key}[{k}]", f"a COCO {key[:-1]}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def read(refs_path: str | os.PathLike, instances_path: str | os.PathLike,
         image_dir: str | os.PathLike, *, split: str | None = None) -> list[RefSample]:
    """One :class:`RefSample` per sentence of every ref (of ``split`` when given).

    Raises:
        FileNotFoundError: either file missing (named).
        ValueError: naming the file and the ref: a corrupt pickle or invalid instances JSON, a ref
            without its fields, a ref whose annotation or image is missing, a box that is not
            finite, has no area or lies outside its image.
    """
    coco = _load_coco(instances_path)
    refs = _load_refs(refs_path)
    samples = []
    for k, ref in enumerate(refs):
        require(ref, ("ref_id", "ann_id", "image_id", "split", "sentences"),
                f"{refs_path}: refs[{k}]", "a ref")
        where = f"{refs_path}: ref {ref['ref_id']}"
        if split is not None and ref["split"] != split:
            continue
        if ref["ann_id"] not in coco.anns:
            raise ValueError(f"{where} names annotation {ref['ann_id']}, absent from "
                             f"{instances_path}")
        if ref["image_id"] not in coco.imgs:
            raise ValueError(f"{where} names image {ref['image_id']}, absent from "
                             f"{instances_path}")
        image = coco.imgs[ref["image_id"]]
        x, y, w, h = as_box(coco.anns[ref["ann_id"]]["bbox"],
                            f"{instances_path}: annotation {ref['ann_id']}", "bbox (x, y, w, h)")
        if w <= 0 or h <= 0:
            raise ValueError(f"{instances_path}: annotation {ref['ann_id']} (ref "
                             f"{ref['ref_id']}): bbox [{x}, {y}, {w}, {h}]: expected w > 0 and "
                             f"h > 0")
        size = (int(as_finite(image["height"], where, "image height")),
                int(as_finite(image["width"], where, "image width")))
        for sentence in ref["sentences"]:
            require(sentence, ("sent", "sent_id"), where, "a sentence")
            try:
                samples.append(RefSample(
                    image=os.path.join(image_dir, image["file_name"]),
                    expression=sentence["sent"], box_xyxy=[x, y, x + w, y + h], image_size=size,
                    ref_id=f"{ref['ref_id']}/{sentence['sent_id']}").validate())
            except ValueError as err:
                raise ValueError(f"{refs_path}: {err}") from None
    return samples


def read_flat(path: str | os.PathLike, image_root: str | os.PathLike = "") -> list[RefSample]:
    """:class:`RefSample` rows from a flat grounding JSON (see the module docstring).

    Raises:
        ValueError: naming the file and the row: invalid JSON (line and column), a row without
            ``image``/``expression``/``bbox``, a bbox that is not 4 finite numbers, has no area or
            lies outside the image, a normalised bbox without the image size.
    """
    rows = load_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of grounding rows, got "
                         f"{type(rows).__name__}")
    samples = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i}"
        require(row, ("image", "expression", "bbox"), where, "a grounding row")
        box = as_box(row["bbox"], where, "bbox (x1, y1, x2, y2)")
        size = None
        if "height" in row or "width" in row:
            require(row, ("height", "width"), where, "a grounding row with an image size")
            size = (int(as_finite(row["height"], where, "height")),
                    int(as_finite(row["width"], where, "width")))
            if size[0] <= 0 or size[1] <= 0:
                raise ValueError(f"{where}: image size {size[1]}x{size[0]}: expected positive "
                                 f"height and width")
        if row.get("normalized"):
            if size is None:
                raise ValueError(f"{path}: row {i} has a normalised bbox but no height/width")
            if min(box) < 0 or max(box) > 1:
                raise ValueError(f"{where}: normalised bbox {box}: expected values in [0, 1]")
            box = [box[0] * size[1], box[1] * size[0], box[2] * size[1], box[3] * size[0]]
        try:
            samples.append(RefSample(image=os.path.join(image_root, row["image"]),
                                     expression=row["expression"], box_xyxy=box,
                                     image_size=size, ref_id=row.get("id", i)).validate())
        except ValueError as err:
            raise ValueError(f"{path}: row {i}: {err}") from None
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

"""Referring expression grounding: the box of the object a sentence names in an image
(RefCOCO/+/g)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpo.datamodules.datasets import RefDataset
from tpo.datamodules.formats import refcoco
from tpo.heads import BoxHead, BoxPrediction
from tpo.heads.base import meta_size
from tpo.metrics import GroundingAccuracy
from tpo.tasks._units import cxcywh_to_px
from tpo.tasks.base import Task
from tpo.tasks.registry import TaskSpec, register_task

__all__ = ["BoxTask", "format_box", "parse_boxes", "xyxy_in_order"]

_NUMBER = r"\s*([-+]?\d+(?:\.\d+)?)\s*"
TEXTUAL_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
"""One box of a textual answer: ``[x1, y1, x2, y2]``."""


def format_box(values: Sequence[float]) -> str:
    """``[x1, y1, x2, y2]`` with two decimals, as the textual answers write boxes."""
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def parse_boxes(text: str) -> np.ndarray:
    """Every ``[x1, y1, x2, y2]`` written in ``text`` (the form of :func:`format_box`), in the
    order written: ``(n, 4)`` float64, ``(0, 4)`` when there is none."""
    return np.array(TEXTUAL_BOX.findall(text), dtype=np.float64).reshape(-1, 4)


def xyxy_in_order(boxes: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: whether each ``(n, 4)`` xyxy box has ``x1 <= x2`` and ``y1 <= y2``."""
    return (boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3])


class BoxTask(Task):
    """One ``(4,)`` normalised cxcywh box per sample, scored as Acc@0.5."""

    head_class = BoxHead
    headline = "acc@0.5"
    dataset_formats = ("refcoco", "refcoco_flat")
    dataset_class = RefDataset
    textual_form = True
    templates = (
        "Where is {query} in the image?",
        "Give the bounding box of {query}.",
        "Locate {query} in the picture.",
        "Find {query} and mark it with a box.",
    )

    def make_metric(self) -> GroundingAccuracy:
        return GroundingAccuracy(iou_threshold=0.5)

    def head_inputs(self, out, index, head) -> dict:
        return {"visual": out.visual[index, 0], "grid_size": out.visual_grid}

    def score(self, metric, predictions, rows, meta) -> None:
        truth = torch.stack([cxcywh_to_px(b[None], meta_size(meta, i), "xyxy")[0]
                             for i, (b, _) in enumerate(zip(rows["boxes"], meta, strict=True))])
        pred = torch.stack([p.box_xyxy.float().cpu() if p is not None else torch.zeros(4)
                            for p in predictions])
        metric.update(pred, truth.cpu())

    def make_dataset(self, samples, *, media_root=None, num_frames=None, sampling=None, **options):
        """A :class:`RefDataset` (images: ``num_frames`` and ``sampling`` do not apply)."""
        return RefDataset(samples, **options)

    def read_synthetic(self, data, split: str) -> list:
        return refcoco.read_flat(data.path(split, self.name), data.root)

    def textual_answer(self, *, box: np.ndarray | None = None, **_) -> str:
        """``[x1, y1, x2, y2]`` normalised."""
        if box is None:
            raise ValueError("task 'box': the textual answer needs box")
        return format_box(box)

    def parse_textual_answer(self, text: str, meta: Mapping[str, Any]) -> BoxPrediction | None:
        """The first box a :meth:`textual_answer` writes (``[x1, y1, x2, y2]`` normalised, clipped
        to [0, 1]) in pixels of the image: ``meta["image_size"]`` ``(H, W)``, default the
        ``frame_size`` (:meth:`prediction_meta`).

        Returns:
            a :class:`~tpo.heads.BoxPrediction` (``box_xyxy (4,)`` pixels), or ``None`` (a miss)
            when ``text`` holds no box or its corners are out of order (``x2 < x1`` or ``y2 < y1``).
        """
        boxes = np.clip(parse_boxes(text)[:1], 0, 1)
        if not len(boxes) or not xyxy_in_order(boxes)[0]:
            return None
        height, width = meta_size([self.prediction_meta(meta, None, 0)], 0)
        pixels = boxes[0] * np.array([width, height, width, height])
        return BoxPrediction(box_xyxy=torch.as_tensor(pixels, dtype=torch.float32))

    def draw(self, prediction, rows, row, meta, frames, folder):
        """``boxes.png``: the predicted box against the true one on the image."""
        from tpo import viz

        truth = cxcywh_to_px(rows["boxes"][row][None], tuple(meta["frame_size"]), "xyxy")[0]
        item = {"image": frames[0], "truth": tuple(truth.tolist()), "pred": prediction.box_xyxy.numpy(),
                "label": meta.get("id", "")}
        return viz.plot_boxes([item], Path(folder) / "boxes.png")

    def answer_fields(self, prediction) -> dict:
        return {"boxes": prediction.box_xyxy.reshape(1, 4)}


register_task(BoxTask(TaskSpec("box", "<box_begin>", "<boxes>")))

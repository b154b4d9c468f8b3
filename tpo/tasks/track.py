"""Single-object tracking: a box per frame from the target's first-frame box (LaSOT, GOT-10k)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tpo.datamodules.datasets import TrackDataset
from tpo.datamodules.formats import got10k, lasot
from tpo.heads import TrackingHead, TrackingPrediction
from tpo.heads.base import meta_size
from tpo.metrics import TrackingSuccess
from tpo.tasks._units import cxcywh_to_px
from tpo.tasks.base import Task
from tpo.tasks.box import format_box, parse_boxes, xyxy_in_order
from tpo.tasks.registry import TaskSpec, register_task

__all__ = ["TrackTask"]


class TrackTask(Task):
    """Boxes ``(T, 4)`` normalised cxcywh and visibility ``(T,)`` per sample, scored as the
    success curve's AUC; the question gives the first-frame box at the input token."""

    head_class = TrackingHead
    headline = "success"
    dataset_formats = ("lasot", "got10k")
    dataset_class = TrackDataset
    textual_form = True
    templates = (
        "Track {query} given at {box} through the video.",
        "The target is {query} at {box} in the first frame. Follow it in every frame.",
        "Follow {query} starting from {box}.",
    )

    def make_metric(self) -> TrackingSuccess:
        return TrackingSuccess()

    def head_inputs(self, out, index, head) -> dict:
        return {"frames": out.per_frame()[0][index], "grid_size": out.visual_grid}

    def batch_inputs(self, batch: Mapping[str, Any], index: Tensor) -> dict:
        """``prompt_boxes (n, 4)``: the first input box (``<track_box>``) of each sample in
        ``index``, NaN for a sample without one (a generated tracking call on a question that gave
        no box: the head then looks at the whole first frame); nothing when the batch carries no
        input boxes (the head then treats every sample as box-less)."""
        boxes, sample = batch.get("prompt_boxes"), batch.get("prompt_box_sample")
        if boxes is None or sample is None or len(boxes) == 0:
            return {}
        sample, boxes = sample.to(index.device), boxes.to(index.device)
        has_box = sample[:, None] == index[None]  # (K, n)
        first = boxes[has_box.long().argmax(0)]
        return {"prompt_boxes": torch.where(has_box.any(0)[:, None], first, float("nan"))}

    def score(self, metric, predictions, rows, meta) -> None:
        for i in range(len(meta)):
            truth = cxcywh_to_px(rows["boxes"][i], meta_size(meta, i), "xywh").cpu()
            missed = predictions[i] is None
            pred = torch.zeros_like(truth) if missed else predictions[i].boxes_xywh.float().cpu()
            metric.update(pred, truth, rows["visible"][i].cpu())

    def read_synthetic(self, data, split: str) -> list:
        """The GOT-10k or LaSOT layout the synthetic folder was written in (``track_format``)."""
        path = data.path(split, self.name)
        if data.track_format == "got10k":
            samples = got10k.read(os.path.dirname(path), split)
        else:
            samples = lasot.read(path)
        for sample in samples:
            sample.fps = data.fps
        return samples

    def prompt_fields(self) -> dict[str, str]:
        return {"box": self.spec.input_token}

    def textual_answer(self, *, boxes: np.ndarray | None = None, **_) -> str:
        """One ``[x1, y1, x2, y2]`` normalised box per frame."""
        if boxes is None:
            raise ValueError("task 'track': the textual answer needs boxes")
        return " ".join(format_box(b) for b in boxes)

    def parse_textual_answer(self, text: str, meta: Mapping[str, Any]) -> TrackingPrediction | None:
        """The boxes a :meth:`textual_answer` writes (one ``[x1, y1, x2, y2]`` normalised per
        frame, clipped to [0, 1]) as ``xywh`` pixels of ``meta["image_size"]`` ``(H, W)`` (default
        the ``frame_size``), one per frame read (``len(meta["timestamps"])``).

        The first boxes written go to the first frames; a frame without one, or whose box has its
        corners out of order, gets a zero box (a miss on that frame). A box of zero area is not
        visible (the textual answer writes zeros where the target is not visible).

        Returns:
            a :class:`~tpo.heads.TrackingPrediction`, or ``None`` (a miss) when ``text`` holds no box.
        """
        written = np.clip(parse_boxes(text), 0, 1)
        if not len(written):
            return None
        written = np.where(xyxy_in_order(written)[:, None], written, 0.0)
        frames = np.zeros((_frame_count(meta), 4))
        frames[: len(written)] = written[: len(frames)]
        height, width = meta_size([self.prediction_meta(meta, None, 0)], 0)
        xywh = np.concatenate([frames[:, :2], frames[:, 2:] - frames[:, :2]], 1)
        pixels = torch.as_tensor(xywh * np.array([width, height, width, height]), dtype=torch.float32)
        visible = (pixels[:, 2] > 0) & (pixels[:, 3] > 0)
        return TrackingPrediction(boxes_xywh=pixels, visible=visible, scores=visible.float())

    def draw(self, prediction, rows, row, meta, frames, folder):
        """``tracking.png``: predicted and true boxes on every frame."""
        from tpo import viz

        truth = cxcywh_to_px(rows["boxes"][row], tuple(meta["frame_size"]), "xywh").numpy()
        return viz.plot_tracks(frames, truth, prediction.boxes_xywh.numpy(), Path(folder) / "tracking.png",
                               meta.get("id", ""), truth_visible=rows["visible"][row].numpy(),
                               pred_visible=prediction.visible.numpy())

    def answer_fields(self, prediction) -> dict:
        return {"track": prediction.boxes_xywh, "scores": prediction.scores}


def _frame_count(meta: Mapping[str, Any]) -> int:
    """The number of frames a sample read: ``len(meta["timestamps"])``."""
    timestamps = meta.get("timestamps")
    if timestamps is None:
        raise ValueError(f"meta: expected 'timestamps' (one per frame read), got keys {sorted(meta)}")
    return len(timestamps)


register_task(TrackTask(TaskSpec("track", "<track_begin>", "<tracking>", input_token="<track_box>")))

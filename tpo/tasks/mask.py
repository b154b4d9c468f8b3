"""Referring video object segmentation: the masks of the object a sentence names, every frame
(DAVIS, Ref-YouTube-VOS, MeViS)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tpo.datamodules.datasets import MaskDataset
from tpo.datamodules.formats import refytvos
from tpo.heads import MaskHead
from tpo.metrics import JAndF
from tpo.tasks.base import Task
from tpo.tasks.registry import TaskSpec, register_task

__all__ = ["MaskTask"]

class MaskTask(Task):
    """Masks ``(T, H, W)`` bool per sample, scored as J&F."""

    head_class = MaskHead
    visual_kwarg = "image_dim"
    headline = "J&F"
    dataset_formats = ("davis", "refytvos", "mevis")
    dataset_class = MaskDataset
    templates = (
        "Segment {query} in the video.",
        "Give the masks of {query} in every frame.",
        "Which pixels belong to {query}? Segment it.",
        "Please segment {query}.",
    )

    def make_metric(self) -> JAndF:
        return JAndF()

    def head_inputs(self, out, index, head) -> dict:
        height, width = out.visual_grid
        visual = out.per_frame()[0][index]
        inputs = {"image": visual.unflatten(2, (height, width)).permute(0, 1, 4, 2, 3)}
        if getattr(head, "high_res_dims", None) is not None:
            if out.frames is None:
                raise ValueError("mask head: high_res_dims is set but the backbone gave no frames")
            frames = out.frames[index].flatten(0, 1).float()
            inputs["high_res"] = [
                F.interpolate(frames, size=(scale * height, scale * width), mode="bilinear", antialias=True)
                .unflatten(0, (len(index), -1))
                .to(out.visual.dtype)
                for scale in head.high_res_scales
            ]
        return inputs

    def read_synthetic(self, data, split: str) -> list:
        samples = refytvos.read(data.path(split, self.name), split)
        for sample in samples:
            sample.fps = data.fps
        return samples

    def prediction_meta(self, meta: Mapping[str, Any], rows: Mapping[str, Any] | None, i: int) -> dict:
        """Masks are predicted at the size of the target masks when there are targets."""
        meta = super().prediction_meta(meta, rows, i)
        if rows is not None:
            meta["image_size"] = tuple(rows["masks"][i].shape[-2:])
        return meta

    def score(self, metric, predictions, rows, meta) -> None:
        for i, truth in enumerate(rows["masks"]):
            missed = predictions[i] is None
            pred = torch.zeros_like(truth, dtype=torch.bool) if missed else predictions[i].masks.cpu()
            metric.update(pred, truth.cpu())

    def textual_answer(self, **values: Any) -> str:
        raise ValueError("task 'mask': no textual answer (masks have none)")

    def draw(self, prediction, rows, row, meta, frames, folder):
        """``masks.png``: predicted and true masks on every frame."""
        from tpo import viz

        return viz.plot_masks(frames, rows["masks"][row].numpy(), prediction.masks.numpy(),
                              Path(folder) / "masks.png", meta.get("id", ""))

    def answer_fields(self, prediction) -> dict:
        return {"masks": prediction.masks, "scores": prediction.scores}


register_task(MaskTask(TaskSpec("mask", "<seg_begin>", "<seg>")))

"""Temporal grounding: when, in seconds, a sentence happens in the video (QVHighlights,
Charades-STA, ActivityNet Captions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpo.datamodules.datasets import MomentDataset
from tpo.datamodules.formats import qvhighlights
from tpo.heads import TemporalGroundingHead
from tpo.metrics import MomentRetrieval
from tpo.ops import span_cxw_to_se
from tpo.tasks.base import Task, frame_options
from tpo.tasks.registry import TaskSpec, register_task

__all__ = ["TemporalTask"]


class TemporalTask(Task):
    """Spans ``(n, 2)`` normalised (center, width) per sample, scored as moment retrieval."""

    head_class = TemporalGroundingHead
    visual_kwarg = "video_dim"
    headline = "R1@0.5"
    default_query = "the event"
    dataset_formats = ("charades_sta", "qvhighlights", "activitynet")
    dataset_class = MomentDataset
    templates = (
        "When does this happen in the video: {query}",
        "Find the moment in the video that matches: {query}",
        "At what time in the video can we see the following? {query}",
        "Give the start and end of the segment where: {query}",
        "Localize the moment described by this sentence: {query}",
    )

    def make_metric(self) -> MomentRetrieval:
        return MomentRetrieval(r1_thresholds=(0.3, 0.5, 0.7))

    def head_inputs(self, out, index, head) -> dict:
        visual, mask = out.per_frame()
        return {"video": visual[index], "video_mask": mask[index],
                "grid_size": out.visual_grid}

    def pack_targets(self, targets: Sequence[Mapping[str, Any]], ids: Sequence[Any]) -> dict[str, Any]:
        """``spans``: a list of ``(n_b, 2)`` tensors (the counts differ), other keys stacked,
        and ``per_sample``: one dict per sample."""
        rows = super().pack_targets([{k: v for k, v in t.items() if k != "spans"} for t in targets], ids)
        rows["spans"] = [torch.as_tensor(np.asarray(t["spans"]), dtype=torch.float32).reshape(-1, 2)
                         for t in targets]
        keys = list(targets[0])
        rows["per_sample"] = [{key: rows[key][k] for key in keys} for k in range(len(targets))]
        return rows

    def head_targets(self, rows: Mapping[str, Any]) -> list[dict]:
        saliency = rows.get("saliency")
        return [
            {"spans": spans, **({"saliency": saliency[i]} if saliency is not None else {})}
            for i, spans in enumerate(rows["spans"])
        ]

    def score(self, metric, predictions, rows, meta) -> None:
        windows = [p.windows if p is not None else torch.zeros(0, 3) for p in predictions]
        truth = [
            span_cxw_to_se(spans.float()) * float(m["duration"])
            for spans, m in zip(rows["spans"], meta, strict=True)
        ]
        metric.update(windows, truth)

    def make_dataset(self, samples, *, media_root=None, num_frames=None, sampling=None, **options):
        """A :class:`MomentDataset`; its videos are ``<media_root>/<vid>.mp4``."""
        if not media_root:
            raise ValueError("temporal datasets need media_root (the folder of the videos)")
        return MomentDataset(samples, media_root, **frame_options(num_frames, sampling), **options)

    def read_synthetic(self, data, split: str) -> list:
        return qvhighlights.read(data.path(split, self.name), clip_len=1.0 / data.fps)

    def textual_answer(self, *, windows_s: np.ndarray | None = None, **_: Any) -> str:
        """``"from 1.0 to 2.5 seconds"`` per window."""
        if windows_s is None:
            raise ValueError("task 'temporal': the textual answer needs windows_s")
        return "; ".join(f"from {s:.1f} to {e:.1f} seconds" for s, e in np.asarray(windows_s))

    def draw(self, prediction, rows, row, meta, frames, folder):
        """``temporal_timeline.png``: predicted windows against the true ones, seconds."""
        from tpo import viz

        duration = float(meta["duration"])
        truth = [[(c - w / 2) * duration, (c + w / 2) * duration] for c, w in rows["spans"][row].numpy()]
        item = {"label": meta.get("id", ""), "duration": duration, "truth": truth,
                "pred": prediction.windows.tolist()}
        return viz.plot_timelines([item], Path(folder) / "temporal_timeline.png")

    def answer_fields(self, prediction) -> dict:
        return {"spans": prediction.windows[:, :2], "scores": prediction.windows[:, 2]}


register_task(TemporalTask(TaskSpec("temporal", "<time_begin>", "<temp>")))

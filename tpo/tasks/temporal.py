"""Temporal grounding: when, in seconds, a sentence happens in the video (QVHighlights,
Charades-STA, ActivityNet Captions)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpo.datamodules.datasets import MomentDataset
from tpo.datamodules.formats import qvhighlights
from tpo.heads import TemporalGroundingHead, TemporalGroundingPrediction
from tpo.metrics import MomentRetrieval
from tpo.ops import span_cxw_to_se
from tpo.tasks.base import Task, frame_options
from tpo.tasks.registry import TaskSpec, register_task

__all__ = ["TemporalTask"]

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
TEXTUAL_WINDOW = re.compile(rf"from\s+({_NUMBER})\s+to\s+({_NUMBER})\s+seconds?", re.IGNORECASE)
"""One window of a textual answer: ``from <start> to <end> seconds``."""


class TemporalTask(Task):
    """Spans ``(n, 2)`` normalised (center, width) per sample, scored as moment retrieval."""

    head_class = TemporalGroundingHead
    visual_kwarg = "video_dim"
    headline = "R1@0.5"
    default_query = "the event"
    dataset_formats = ("charades_sta", "qvhighlights", "activitynet")
    dataset_class = MomentDataset
    textual_form = True
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

    def parse_textual_answer(self, text: str, meta: Mapping[str, Any]) -> TemporalGroundingPrediction | None:
        """The windows a :meth:`textual_answer` writes (``"from 1.0 to 2.5 seconds"``, any number
        of them), in seconds clamped to ``[0, meta["duration"]]`` as the head's are.

        The k-th window written (from 0) scores ``1 / (k + 1)``: the written order is the ranking.
        A window ending before it starts is dropped; ``saliency`` is empty (text gives none).

        Returns:
            a :class:`~tpo.heads.TemporalGroundingPrediction` with ``windows (K, 3)``, or ``None``
            (a miss) when ``text`` holds no window.
        """
        windows = [(float(s), float(e)) for s, e in TEXTUAL_WINDOW.findall(text)]
        windows = [(s, e) for s, e in windows if e >= s]
        if not windows:
            return None
        seconds = torch.tensor(windows, dtype=torch.float32).clamp(0, _meta_duration(meta))
        scores = 1.0 / torch.arange(1, len(windows) + 1, dtype=torch.float32)
        return TemporalGroundingPrediction(windows=torch.cat([seconds, scores[:, None]], 1),
                                           saliency=torch.zeros(0))

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


def _meta_duration(meta: Mapping[str, Any]) -> float:
    """``meta["duration"]``: the clip length in seconds, > 0."""
    try:
        duration = float(meta["duration"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"meta: expected 'duration' in seconds, got {meta.get('duration')!r} "
                         f"(keys {sorted(meta)})") from None
    if not duration > 0:
        raise ValueError(f"meta['duration']: expected > 0 seconds, got {duration}")
    return duration


register_task(TemporalTask(TaskSpec("temporal", "<time_begin>", "<temp>")))

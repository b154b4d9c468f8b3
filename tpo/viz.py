"""Pictures of what the heads predict: loss curves, span timelines, boxes and masks on frames.

Every function draws on its own ``matplotlib.figure.Figure`` (no pyplot state, no global backend
switch, so a notebook's inline plots keep working) into a PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ["plot_losses", "plot_timelines", "plot_boxes", "plot_tracks", "plot_masks"]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_losses(history: Mapping[str, Sequence[tuple[int, float]]], path: str | Path) -> Path:
    """Loss curves: ``{name: [(step, value), ...]}``, one line each, log scale."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, points in history.items():
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=name, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("training losses")
    return _save(fig, path)


TIMELINE_MARGIN_IN, TIMELINE_ROW_IN = 1.4, 0.45
"""Timeline figure height: title, axis labels and ticks (inches), plus this much per row; with less
margin a one-row figure's axes collapse to a sliver under ``tight_layout``."""


def plot_timelines(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Predicted vs true spans: rows of ``{"label", "duration" s, "truth" [[s, e], ...],
    "pred" [[s, e, score], ...]}`` (the top prediction is drawn solid, the next two faint)."""
    fig = Figure(figsize=(8, TIMELINE_MARGIN_IN + TIMELINE_ROW_IN * len(rows)))
    ax = fig.subplots()
    for i, row in enumerate(rows):
        y = len(rows) - 1 - i
        ax.broken_barh([(0, row["duration"])], (y - 0.4, 0.8), color="#eeeeee")
        for start, end in row["truth"]:
            ax.broken_barh([(start, end - start)], (y - 0.4, 0.35), color="#2a9d8f")
        for k, (start, end, *_) in enumerate(row["pred"][:3]):
            ax.broken_barh(
                [(start, end - start)], (y + 0.05, 0.35), color="#e76f51", alpha=1.0 if k == 0 else 0.3
            )
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows][::-1], fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_title("temporal grounding: truth (green, below) vs prediction (orange, above)")
    return _save(fig, path)


def _frame_axes(count: int, size: float = 2.2):
    cols = min(count, 6)
    rows = (count + cols - 1) // cols
    fig = Figure(figsize=(size * cols, size * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat)


def _rect(ax, xyxy, color: str, style: str = "-") -> None:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=color, lw=1.5, ls=style))


def plot_boxes(items: Sequence[Mapping], path: str | Path) -> Path:
    """Boxes on frames: items of ``{"image" (H, W, 3) uint8, "truth" xyxy px, "pred" xyxy px,
    "label"}``."""
    fig, axes = _frame_axes(len(items))
    for ax, item in zip(axes, items, strict=False):
        ax.imshow(item["image"])
        _rect(ax, item["truth"], "#2a9d8f")
        _rect(ax, item["pred"], "#e76f51", "--")
        ax.set_title(item.get("label", ""), fontsize=6)
    fig.suptitle("boxes: truth (green) vs prediction (orange, dashed)", fontsize=9)
    return _save(fig, path)


def plot_tracks(
    frames: np.ndarray,
    truth_xywh: np.ndarray,
    pred_xywh: np.ndarray,
    path: str | Path,
    label: str = "",
    *,
    truth_visible: np.ndarray | None = None,
    pred_visible: np.ndarray | None = None,
) -> Path:
    """One tracked clip: ``frames (T, H, W, 3)``, ``truth_xywh`` / ``pred_xywh (T, 4)`` px; a box
    is drawn only on the frames where ``truth_visible`` / ``pred_visible (T,)`` bool say the object
    is there (default every frame)."""
    count = len(frames)
    truth_visible = np.ones(count, bool) if truth_visible is None else np.asarray(truth_visible, bool)
    pred_visible = np.ones(count, bool) if pred_visible is None else np.asarray(pred_visible, bool)
    fig, axes = _frame_axes(count)
    for t, ax in enumerate(axes[:count]):
        ax.imshow(frames[t])
        for box, shown, color, style in ((truth_xywh[t], truth_visible[t], "#2a9d8f", "-"),
                                         (pred_xywh[t], pred_visible[t], "#e76f51", "--")):
            if shown:
                x, y, w, h = (float(v) for v in box)
                _rect(ax, (x, y, x + w, y + h), color, style)
        ax.set_title(f"t={t}", fontsize=7)
    fig.suptitle(f"tracking {label}: truth (green) vs prediction (orange, dashed)", fontsize=9)
    return _save(fig, path)


def plot_masks(
    frames: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: str | Path, label: str = ""
) -> Path:
    """One segmented clip: ``frames (T, H, W, 3)``, ``truth`` / ``pred (T, H, W)`` bool; the
    prediction is drawn in orange, the truth's outline in green."""
    fig, axes = _frame_axes(len(frames))
    for t, ax in enumerate(axes[: len(frames)]):
        ax.imshow(frames[t])
        overlay = np.zeros((*pred[t].shape, 4))
        overlay[pred[t]] = (0.91, 0.44, 0.32, 0.55)
        ax.imshow(overlay)
        ax.contour(truth[t].astype(float), levels=[0.5], colors="#2a9d8f", linewidths=1.0)
        ax.set_title(f"t={t}", fontsize=7)
    fig.suptitle(f"segmentation {label}: prediction (orange) vs truth outline (green)", fontsize=9)
    return _save(fig, path)

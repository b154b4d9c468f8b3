"""How each task connects a backbone's output to its head, its targets and its metric.

A :class:`TaskAdapter` says, for one task: which head class to build and which of its arguments
takes the backbone's visual width; how to cut the head's inputs out of a
:class:`~tpo.backbones.BackboneOutput`; how to turn the batch's targets into the head's targets;
and how to score post-processed predictions with the task's metric in boundary units (seconds,
pixels). Register adapters for new tasks with :func:`register_task_adapter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchvision.ops import box_convert

from tpo.backbones.base import BackboneOutput
from tpo.heads import BoxHead, MaskHead, TemporalGroundingHead, TrackingHead
from tpo.metrics import GroundingAccuracy, JAndF, MomentRetrieval, TrackingSuccess
from tpo.ops import span_cxw_to_se

__all__ = ["TaskAdapter", "TASK_ADAPTERS", "get_task_adapter", "register_task_adapter"]


@dataclass(frozen=True)
class TaskAdapter:
    """The glue of one task.

    Attributes:
        head_class: the default head class.
        visual_kwarg: the head constructor argument that takes the backbone's visual width.
        head_inputs: ``(output, index (n,), head) -> kwargs`` for ``head.forward`` (besides the
            task embeddings) for the samples ``index``.
        head_targets: ``(targets rows) -> targets`` in the form ``head.loss`` takes.
        make_metric: a new metric object.
        headline: the metric key shown in tables.
        score: ``(metric, predictions, targets rows, meta) -> None`` updates the metric with
            post-processed predictions; a ``None`` prediction is a miss (the model did not call
            the task).
        batch_inputs: ``(batch, index (n,)) -> kwargs`` for ``head.forward`` taken from the batch
            itself rather than the backbone's output (the tracker's first-frame box), or ``None``.
    """

    head_class: type[nn.Module]
    visual_kwarg: str
    head_inputs: Callable[..., dict]
    head_targets: Callable[[Mapping[str, Any]], Any]
    make_metric: Callable[[], Metric]
    headline: str
    score: Callable[[Metric, Sequence[Any], Mapping[str, Any], Sequence[Mapping]], None]
    batch_inputs: Callable[[Mapping[str, Any], Tensor], dict] | None = None


def _image_size(meta: Mapping) -> tuple[int, int]:
    size = meta.get("image_size")
    if size is None:
        raise ValueError(f"meta: needs 'image_size' (height, width) px, got keys {sorted(meta)}")
    return int(size[0]), int(size[1])


def _cxcywh_to_px(boxes: Tensor, size: tuple[int, int], fmt: str) -> Tensor:
    height, width = size
    scale = boxes.new_tensor([width, height, width, height])
    return box_convert(boxes.float(), "cxcywh", fmt) * scale


# ---------------------------------------------------------------------------- temporal
def _temporal_inputs(out: BackboneOutput, index: Tensor, head: nn.Module | None = None) -> dict:
    return {"video": out.visual[index], "video_mask": out.visual_mask[index], "grid_size": out.visual_grid}


def _temporal_targets(rows: Mapping[str, Any]) -> list[dict]:
    saliency = rows.get("saliency")
    return [
        {"spans": spans, **({"saliency": saliency[i]} if saliency is not None else {})}
        for i, spans in enumerate(rows["spans"])
    ]


def _temporal_score(metric, preds, rows, meta) -> None:
    windows = [p.windows if p is not None else torch.zeros(0, 3) for p in preds]
    truth = [
        span_cxw_to_se(spans.float()) * float(m["duration"])
        for spans, m in zip(rows["spans"], meta, strict=True)
    ]
    metric.update(windows, truth)


# ---------------------------------------------------------------------------- box
def _box_inputs(out: BackboneOutput, index: Tensor, head: nn.Module | None = None) -> dict:
    return {"visual": out.visual[index, 0], "grid_size": out.visual_grid}


def _box_score(metric, preds, rows, meta) -> None:
    truth = torch.stack(
        [_cxcywh_to_px(b[None], _image_size(m), "xyxy")[0] for b, m in zip(rows["boxes"], meta, strict=True)]
    )
    pred = torch.stack([p.box_xyxy.float().cpu() if p is not None else torch.zeros(4) for p in preds])
    metric.update(pred, truth.cpu())


# ---------------------------------------------------------------------------- track
def _track_inputs(out: BackboneOutput, index: Tensor, head: nn.Module | None = None) -> dict:
    return {"frames": out.visual[index], "grid_size": out.visual_grid}


def _track_batch_inputs(batch: Mapping[str, Any], index: Tensor) -> dict:
    """``prompt_boxes (n, 4)``: the first input box (``<track_box>``) of each sample in ``index``,
    NaN for a sample without one (a generated tracking call on a question that gave no box: the
    head then looks at the whole first frame); nothing when the batch carries no input boxes."""
    boxes, sample = batch.get("track_boxes"), batch.get("track_box_sample")
    if boxes is None or sample is None or len(boxes) == 0:
        return {}
    sample, boxes = sample.to(index.device), boxes.to(index.device)
    has_box = sample[:, None] == index[None]  # (K, n)
    first = boxes[has_box.long().argmax(0)]
    return {"prompt_boxes": torch.where(has_box.any(0)[:, None], first, float("nan"))}


def _track_score(metric, preds, rows, meta) -> None:
    for i, m in enumerate(meta):
        truth = _cxcywh_to_px(rows["boxes"][i], _image_size(m), "xywh").cpu()
        pred = preds[i].boxes_xywh.float().cpu() if preds[i] is not None else torch.zeros_like(truth)
        metric.update(pred, truth, rows["visible"][i].cpu())


# ---------------------------------------------------------------------------- mask
def _mask_inputs(out: BackboneOutput, index: Tensor, head: nn.Module | None = None) -> dict:
    height, width = out.visual_grid
    inputs = {"image": out.visual[index].unflatten(2, (height, width)).permute(0, 1, 4, 2, 3)}
    if getattr(head, "high_res_dims", None) is not None:
        if out.frames is None:
            raise ValueError("mask head: high_res_dims is set but the backbone gave no frames")
        frames = out.frames[index].flatten(0, 1).float()
        inputs["high_res"] = [
            F.interpolate(frames, size=(scale * height, scale * width), mode="bilinear", antialias=True)
            .unflatten(0, (len(index), -1))
            .to(out.visual.dtype)
            for scale in (4, 2)
        ]
    return inputs


def _mask_score(metric, preds, rows, meta) -> None:
    for i, truth in enumerate(rows["masks"]):
        pred = preds[i].masks.cpu() if preds[i] is not None else torch.zeros_like(truth, dtype=torch.bool)
        metric.update(pred, truth.cpu())


TASK_ADAPTERS: dict[str, TaskAdapter] = {
    "temporal": TaskAdapter(
        TemporalGroundingHead,
        "video_dim",
        _temporal_inputs,
        _temporal_targets,
        lambda: MomentRetrieval(r1_thresholds=(0.3, 0.5, 0.7)),
        "R1@0.5",
        _temporal_score,
    ),
    "box": TaskAdapter(
        BoxHead,
        "visual_dim",
        _box_inputs,
        lambda rows: {"boxes": rows["boxes"]},
        lambda: GroundingAccuracy(iou_threshold=0.5),
        "acc@0.5",
        _box_score,
    ),
    "track": TaskAdapter(
        TrackingHead,
        "visual_dim",
        _track_inputs,
        lambda rows: {"boxes": rows["boxes"], "visible": rows["visible"]},
        TrackingSuccess,
        "success",
        _track_score,
        _track_batch_inputs,
    ),
    "mask": TaskAdapter(
        MaskHead, "image_dim", _mask_inputs, lambda rows: {"masks": rows["masks"]}, JAndF, "J&F", _mask_score
    ),
}


def register_task_adapter(task: str, adapter: TaskAdapter) -> None:
    """Connect a (newly registered) task to a head, its inputs, targets and metric."""
    TASK_ADAPTERS[task] = adapter


def get_task_adapter(task: str) -> TaskAdapter:
    if task not in TASK_ADAPTERS:
        raise ValueError(
            f"task {task!r} has no adapter; known: {sorted(TASK_ADAPTERS)} "
            "(add one with tpo.tasks.register_task_adapter)"
        )
    return TASK_ADAPTERS[task]

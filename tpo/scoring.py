"""``TaskMetrics``: the evaluation metrics :class:`~tpo.TPOModule` logs, per task and mode.

Two modes per task: ``teacher`` scores the heads on the teacher-forced task tokens; ``generated``
scores the same predictions but counts a sample as a miss where the model would not have called
its task (a task-begin token that is not the argmax). ``assign`` is the fraction of samples whose
task-begin tokens all are. One evaluation batch::

    out = model(batch); _, correct = model.assignment(batch, out)     # correct (B,) bool
    metrics.update(model, batch, model.run_heads(batch, out), correct)
    ... epoch end: metrics.compute(prefix, any_process) -> {"val/box/acc@0.5": ..., ...}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from tpo.model import TaskModel
from tpo.tasks import get_task

__all__ = ["TaskMetrics", "select_rows"]


def select_rows(rows: Mapping[str, Any], keep: Sequence[int]) -> dict[str, Any]:
    """The collator's target rows of one task (tensors and lists, one entry per sample of the
    task) restricted to the entries ``keep``."""
    out = {}
    for key, value in rows.items():
        if isinstance(value, Tensor):
            out[key] = value[torch.as_tensor(list(keep), dtype=torch.long, device=value.device)]
        else:
            out[key] = [value[i] for i in keep]
    return out


class TaskMetrics(nn.Module):
    """The ``teacher`` and ``generated`` metric of every task (:meth:`Task.make_metric
    <tpo.tasks.Task.make_metric>`) and the task-assignment accuracy ``assign``.

    Args:
        tasks: the task names (the model's heads).
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.teacher = nn.ModuleDict({t: get_task(t).make_metric() for t in tasks})
        self.generated = nn.ModuleDict({t: get_task(t).make_metric() for t in tasks})
        self.assign = MeanMetric()

    def update(
        self, model: TaskModel, batch: Mapping[str, Any], results: Mapping[str, tuple[Any, Tensor]],
        correct: Tensor,
    ) -> None:
        """Score one batch: ``results`` of :meth:`TaskModel.run_heads`, ``correct (B,)`` of
        :meth:`TaskModel.assignment`. Samples whose ``meta`` says ``padding`` (repeats that give
        every process the same number of batches, :class:`~tpo.datamodules.MultiTaskSampler`)
        are not scored, so each sample counts once however the split is sharded."""
        batch_size = batch["input_ids"].shape[0]
        padding = [bool(m.get("padding", False)) for m in batch.get("meta") or [{}] * batch_size]
        scored = torch.zeros_like(correct)
        for task, (head_out, index) in results.items():
            rows = model.target_rows(batch, task, index)
            preds, meta = model.postprocess(batch, task, head_out, index, rows)
            keep = [i for i, b in enumerate(index.tolist()) if not padding[b]]
            scored[index[keep]] = True
            preds, rows, meta = [preds[i] for i in keep], select_rows(rows, keep), [meta[i] for i in keep]
            task_obj = get_task(task)
            task_obj.score(self.teacher[task], preds, rows, meta)
            generated = [p if bool(correct[b]) else None
                         for p, b in zip(preds, rows["sample_index"].tolist(), strict=True)]
            task_obj.score(self.generated[task], generated, rows, meta)
        if scored.any():
            self.assign.update(correct[scored].float())

    def compute(
        self, prefix: str, any_process: Callable[[Tensor], Tensor] | None = None
    ) -> dict[str, Tensor]:
        """The scalar values of every metric updated on some process, then reset them all.

        Args:
            prefix: ``"val"`` or ``"test"``: keys ``<prefix>/assign_acc``, ``<prefix>/<task>/<key>``
                and ``<prefix>_generated/<task>/<key>``.
            any_process: ``(M,) bool -> (M,) bool``, whether any process updated each metric (one
                collective; ``None``: one process). Every process then takes part in each updated
                metric's sync, in the same order, whether or not it saw that task.
        """
        entries: list[tuple[str, str | None, Metric]] = [(f"{prefix}/assign_acc", None, self.assign)]
        entries += [(tag, task, metric)
                    for tag, metrics in ((prefix, self.teacher), (f"{prefix}_generated", self.generated))
                    for task, metric in metrics.items()]
        updated = torch.tensor([m.update_called for *_, m in entries], device=self.assign.device)
        if any_process is not None:
            updated = any_process(updated)
        logged: dict[str, Tensor] = {}
        for (tag, task, metric), anywhere in zip(entries, updated.tolist(), strict=True):
            if anywhere:
                with warnings.catch_warnings():  # this process may have seen none of the task
                    warnings.filterwarnings("ignore", message=".*was called before the ``update``")
                    values = metric.compute()
                if task is None:
                    logged[tag] = values.float()
                else:
                    scalars = {k: v for k, v in values.items() if v.numel() == 1}
                    logged.update({f"{tag}/{task}/{k}": v.float() for k, v in scalars.items()})
            metric.reset()
        return logged

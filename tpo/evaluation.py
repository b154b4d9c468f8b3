"""Scoring a :class:`~tpo.Predictor` on a synthetic split, with the task metrics of :mod:`tpo.metrics`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tpo.datamodules.collate import TaskCollator
from tpo.datamodules.multitask import synthetic_task_dataset
from tpo.datamodules.synthetic import SyntheticDataset
from tpo.progress import progress as progress_counter
from tpo.tasks import BUILTIN_TASKS, get_task

if TYPE_CHECKING:
    from tpo.predict import Predictor

__all__ = ["evaluate_predictor"]


def evaluate_predictor(
    predictor: Predictor,
    root: str | os.PathLike,
    split: str = "val",
    *,
    tasks: Sequence[str] = BUILTIN_TASKS,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    **generate_kwargs,
) -> dict[str, dict[str, float]]:
    """Run the predictor over a split written by :func:`~tpo.datamodules.make_synthetic_dataset`
    and score it with the task metrics :class:`~tpo.TPOModule` logs.

    Each sample is read as the validation datasets read it (``num_frames`` of the predictor,
    uniform sampling) and asked its dataset question (:func:`~tpo.datamodules.prompts.make_prompt`,
    seeded per sample), with the first-frame box for tracking. A question the model answers with
    another task or in text counts as a miss (the metrics' ``generated`` mode of the module).

    Returns:
        ``{task: {metric: value, ..., "assign_acc": fraction of questions where the model called
        this task, "n": number of questions}}``; metrics as :mod:`tpo.metrics` computes them
        (temporal ``R1@0.5`` / ``mIoU``, box ``acc@0.5``, track ``success``, mask ``J&F``...).
    """
    data = SyntheticDataset.load(root)
    if split not in data.files:
        raise ValueError(f"split: {root} has splits {sorted(data.files)}, not {split!r}")
    results: dict[str, dict[str, float]] = {}
    for task in tasks:
        if task not in BUILTIN_TASKS:
            raise ValueError(f"tasks: the synthetic data has {BUILTIN_TASKS}, not {task!r}")
        dataset = synthetic_task_dataset(data, task, split, num_frames=predictor.num_frames,
                                         sampling="uniform")
        count = len(dataset) if limit is None else min(limit, len(dataset))
        task_obj = get_task(task)
        metric = task_obj.make_metric()
        called = 0
        bar = progress_counter(count, f"predict {task}", disable=not progress)
        for start in range(0, count, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, count))]
            answers = predictor.predict_items(items, **generate_kwargs)
            rows = TaskCollator.pack_targets(items)[task]
            meta = [task_obj.prediction_meta(item["meta"], rows, i) for i, item in enumerate(items)]
            preds = [a.prediction if a.task == task else None for a in answers]
            called += sum(p is not None for p in preds)
            task_obj.score(metric, preds, rows, meta)
            bar.update(len(items))
        bar.close()
        values = {k: float(v) for k, v in metric.compute().items() if v.numel() == 1}
        results[task] = {**values, "assign_acc": called / max(count, 1), "n": float(count)}
    return results

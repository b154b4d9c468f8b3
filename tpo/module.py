"""``TPOModule``: trains a :class:`~tpo.model.TaskModel` (``module.model``) with Lightning.

``L = lm_weight * L_lm + sum_task w_task * sum(weighted(head.loss(...), head.weight_dict).values())``;
the CE on the task-begin tokens is part of ``L_lm`` and is logged on its own as the task-assignment
loss::

    out = model(batch); results = model.run_heads(batch, out)    # {task: (head output, index)}
    total, terms, extra = training_losses(batch)    # means over all processes (one collective)
    -> NonFiniteLoss (tpo.callbacks) -> backward -> AdamW (stage groups, warmup + cosine)
    evaluation: tpo.scoring.TaskMetrics; heads export: tpo.export
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from transformers import get_cosine_schedule_with_warmup

from tpo import export
from tpo.backbones.base import Backbone, BackboneOutput
from tpo.callbacks import NONFINITE_MODES, NonFiniteLoss, NonFiniteLossError
from tpo.export import HEADS_CONFIG, HEADS_WEIGHTS
from tpo.model import TaskModel, label_tokens, seeded_rng
from tpo.schedules import WallClockCosine
from tpo.scoring import TaskMetrics
from tpo.stages import get_stage

__all__ = ["HEADS_CONFIG", "HEADS_WEIGHTS", "NONFINITE_MODES", "NonFiniteLossError", "TPOModule"]


class TPOModule(L.LightningModule):
    """Trains a :class:`~tpo.model.TaskModel`: the TPO losses, metrics, optimizer and schedule.

    Args:
        backbone, heads, lora, query_words: build :attr:`model`, a :class:`~tpo.model.TaskModel`.
        loss_weights: ``{task: w}`` (default 1 each) on the sum of that head's named terms.
        lm_weight: weight of the language-modelling loss.
        stage: ``"stage1"``, ``"stage2"``, ``"stage3"``, ``"full"`` (:mod:`tpo.stages`, on the
            parameter names of :attr:`model`: ``backbone.…``, ``heads.…``).
        learning_rates: ``{group name: lr}`` overriding the stage's rates.
        warmup_ratio: fraction of the optimizer steps spent in linear warmup.
        schedule_steps: the cosine schedule's length in optimizer steps (default: the trainer's
            estimate, from ``max_steps`` or ``max_epochs``).
        schedule_seconds: instead, the schedule's length in seconds of training (wall clock), for
            a run limited by ``max_time``: the warmup and the cosine follow the time elapsed since
            the optimizer was built, so they end with the budget whatever the step rate
            (:class:`~tpo.schedules.WallClockCosine`; a resumed run starts its clock afresh).
        init_from: a Lightning checkpoint of the previous stage whose weights start this one (the
            optimizer starts afresh): ``tpo fit ... --model.init_from stage1.ckpt``.
        nonfinite: what a NaN or infinite training loss term does: ``"stop"`` or ``"skip"``
            (:attr:`nonfinite_callback`, a :class:`~tpo.callbacks.NonFiniteLoss` that
            :meth:`configure_callbacks` adds), ``None`` for no such callback.

    Randomness inside a training step (dropout) is drawn from a generator seeded with (the torch
    seed at fit start, global step, batch index, rank) and leaves the global generator as it was,
    so a run resumed from a checkpoint draws the same dropout masks as an uninterrupted one.
    """

    def __init__(
        self, *, backbone: Backbone | Mapping[str, Any], heads: Mapping[str, Mapping] | None = None,
        loss_weights: Mapping[str, float] | None = None, lm_weight: float = 1.0, stage: str = "stage2",
        lora: Mapping[str, Any] | None = None, learning_rates: Mapping[str, float] | None = None,
        warmup_ratio: float = 0.03, schedule_steps: int | None = None,
        schedule_seconds: float | None = None, init_from: str | None = None,
        nonfinite: str | None = "stop", query_words: bool = False,
    ) -> None:
        super().__init__()
        self.nonfinite_callback = None if nonfinite is None else NonFiniteLoss(nonfinite)
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else None)
        self.model = TaskModel(backbone, heads, lora=lora, query_words=query_words)
        if unknown := set(loss_weights or {}) - set(self.heads):
            raise ValueError(f"loss_weights: no head for tasks {sorted(unknown)}; "
                             f"heads: {sorted(self.heads)}")
        self.loss_weights = {t: float((loss_weights or {}).get(t, 1.0)) for t in self.heads}
        self.lm_weight, self.stage = lm_weight, get_stage(stage)
        self.learning_rates = dict(learning_rates or {})
        if unknown := set(self.learning_rates) - {g.name for g in self.stage.groups}:
            raise ValueError(f"learning_rates: {sorted(unknown)} are not parameter groups of stage "
                             f"{self.stage.name!r} ({[g.name for g in self.stage.groups]})")
        if schedule_steps is not None and schedule_seconds is not None:
            raise ValueError("schedule_steps, schedule_seconds: give at most one schedule length")
        if schedule_seconds is not None and not schedule_seconds > 0:
            raise ValueError(f"schedule_seconds: expected > 0, got {schedule_seconds}")
        self.warmup_ratio, self.schedule_steps = warmup_ratio, schedule_steps
        self.schedule_seconds = schedule_seconds
        if init_from is not None:
            export.load_checkpoint_weights(self, init_from)
        self.stage.assign(self.model)
        self.metrics = TaskMetrics(list(self.heads))
        self.last_loss_terms: dict[str, Tensor] = {}  # what NonFiniteLoss checks
        self._step_seed = 0

    @property
    def backbone(self) -> Backbone:
        return self.model.backbone

    @property
    def heads(self) -> nn.ModuleDict:
        return self.model.heads

    @property
    def query_words(self) -> nn.Module | None:
        return self.model.query_words

    def forward(self, batch: Mapping[str, Any]) -> BackboneOutput:
        return self.model(batch)

    def run_heads(self, batch: Mapping[str, Any], out: BackboneOutput) -> dict[str, tuple[Any, Tensor]]:
        """:meth:`TaskModel.run_heads <tpo.model.TaskModel.run_heads>`."""
        return self.model.run_heads(batch, out)

    def head_embeddings(self, batch: Mapping[str, Any], embeds: Tensor, index: Tensor) -> Tensor:
        """:meth:`TaskModel.head_embeddings <tpo.model.TaskModel.head_embeddings>`."""
        return self.model.head_embeddings(batch, embeds, index)

    @property
    def nonfinite_skipped(self) -> int:
        """Batches skipped for a non-finite loss (:attr:`NonFiniteLoss.skipped`, in checkpoints)."""
        return 0 if self.nonfinite_callback is None else self.nonfinite_callback.skipped

    def configure_callbacks(self) -> list[L.Callback]:
        return [] if self.nonfinite_callback is None else [self.nonfinite_callback]

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        self._step_seed = torch.initial_seed()

    def _step_rng(self, batch_idx: int) -> contextlib.AbstractContextManager:
        """While a trainer runs the step: the global generators seeded from (seed at fit start,
        global step, batch index, rank), their state outside left untouched."""
        if self._trainer is None:
            return contextlib.nullcontext()
        return seeded_rng([self._step_seed, self.global_step, batch_idx, self.global_rank], self.device)

    def training_losses(
        self, batch: Mapping[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The training loss and its named terms.

        Every mean (over label tokens, boxes, frames, matched spans...) is taken over all
        processes (:meth:`loss_normalizers`), so a DDP step equals one process on the union batch.

        Returns:
            ``total`` (scalar, with zero-weighted parameters for DDP), the terms (``lm_loss``,
            ``assign_loss``, ``<task>/<term>`` unweighted as the heads return them) and extra
            logged values (``assign_acc``, ``<task>/<term>_weighted``: the term times its weight in
            the head's ``weight_dict``, ``<task>/loss``: their sum, before ``loss_weights``).
        """
        from tpo.losses import weighted

        out = self.model(batch)
        results = self.model.run_heads(batch, out)
        targets = self.model.head_targets(batch, results)
        lm_tokens = label_tokens(batch)
        normalizers = self.loss_normalizers(lm_tokens, results, targets)
        lm_loss = out.loss * lm_tokens / normalizers["lm"]["tokens"]
        total = self.lm_weight * lm_loss
        terms = {"lm_loss": lm_loss}
        extra = {}
        assign_loss, correct = self.model.assignment(batch, out)
        if assign_loss is not None:
            terms["assign_loss"] = assign_loss
            extra["assign_acc"] = correct.float().mean()
        for task, (head_out, _) in results.items():
            head = self.heads[task]
            if task in normalizers:
                head_terms = head.loss(head_out, targets[task], normalizers=normalizers[task])
            else:
                head_terms = head.loss(head_out, targets[task])
            weights = getattr(head, "weight_dict", None)  # a custom head without one: weights 1
            scaled = weighted(head_terms, weights) if weights is not None else dict(head_terms)
            task_loss = sum(scaled.values())
            total = total + self.loss_weights[task] * task_loss
            extra[f"{task}/loss"] = task_loss
            terms.update({f"{task}/{name}": v for name, v in head_terms.items()})
            extra.update({f"{task}/{name}_weighted": v for name, v in scaled.items()})
        return total + self.model.touch_parameters(), terms, extra

    def loss_normalizers(self, lm_tokens: Tensor, results: Mapping, targets: Mapping) -> dict[str, dict]:
        """:meth:`TaskModel.loss_normalizers <tpo.model.TaskModel.loss_normalizers>` summed over
        the trainer's processes in one collective: ``{"lm": {"tokens": n}, task: {key: n}}``."""
        world = self.trainer.world_size if self._trainer is not None else 1
        reduce = (lambda v: self.trainer.strategy.reduce(v, reduce_op="sum")) if world > 1 else None
        return self.model.loss_normalizers(lm_tokens, results, targets, reduce, world)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        with self._step_rng(batch_idx):
            total, terms, extra = self.training_losses(batch)
        self.last_loss_terms = {k: v.detach() for k, v in {**terms, "loss": total}.items()}
        batch_size = batch["input_ids"].shape[0]
        log = {f"train/{k}": v.detach() for k, v in {**terms, **extra, "loss": total}.items()}
        self.log_dict(log, batch_size=batch_size, prog_bar=False)
        self.log("loss", total.detach(), batch_size=batch_size, prog_bar=True, logger=False)
        return total

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: Mapping[str, Any], prefix: str) -> None:
        out = self.model(batch)
        tokens = int(label_tokens(batch)) if out.loss is not None else 0
        if tokens:  # weighted by label tokens: the epoch's value is the mean over all of them
            self.log(f"{prefix}/lm_loss", out.loss, batch_size=tokens, sync_dist=True)
        _, correct = self.model.assignment(batch, out)
        self.metrics.update(self.model, batch, self.model.run_heads(batch, out), correct)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _log_metrics(self, prefix: str) -> None:
        """Log and reset the metrics some process updated; which ones is agreed in one collective."""
        world = self.trainer.world_size if self._trainer is not None else 1
        anywhere = (lambda updated: self.all_gather(updated).any(0)) if world > 1 else None
        self.log_dict(self.metrics.compute(prefix, anywhere))

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> list[dict]:
        """Per sample ``{"meta", "task", "prediction"}`` (:meth:`tpo.model.TaskModel.predict`)."""
        return self.model.predict(batch)

    # ------------------------------------------------------------------ export
    def save_heads(self, directory: str | Path) -> None:
        """:func:`tpo.export.save_heads`, with this module's loss weights and stage."""
        export.save_heads(self.model, directory, loss_weights=self.loss_weights, lm_weight=self.lm_weight,
                          stage=self.stage.name)

    def load_heads(self, directory: str | Path) -> None:
        export.load_heads(self.model, directory)

    @classmethod
    def from_heads(cls, directory: str | Path, backbone: Backbone | Mapping, **overrides) -> TPOModule:
        """The module saved with the heads (``overrides`` replace its options) on ``backbone``."""
        module = cls(**{**export.saved_options(directory, backbone), **overrides})
        module.load_heads(directory)
        return module

    def configure_optimizers(self):
        groups = self.stage.param_groups(self.model)
        for group in groups:
            group["lr"] = self.learning_rates.get(group["name"], group["lr"])
        optimizer = torch.optim.AdamW(groups)
        if self.schedule_seconds is not None:
            scheduler = WallClockCosine(optimizer, seconds=self.schedule_seconds,
                                        warmup_ratio=self.warmup_ratio)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        total = self.schedule_steps or self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("schedule_steps: the trainer has no step limit (max_time only); give "
                             "TPOModule(schedule_steps=...) or schedule_seconds for the cosine "
                             "schedule's length")
        total = max(1, int(total))
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

"""``TPOModule``: co-trains the task heads with the language loss.

``L = lm_weight * L_lm + sum_task w_task * sum(head.loss(...).values())``; the CE on the
task-begin tokens is part of ``L_lm`` and is logged on its own as the task-assignment loss.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchmetrics import MeanMetric
from transformers import get_cosine_schedule_with_warmup

from tpo.arguments import unknown_arguments
from tpo.backbones.base import Backbone, BackboneOutput
from tpo.backbones.factory import create_backbone
from tpo.backbones.lora import is_lora_parameter
from tpo.io import atomic_path, write_text_atomic
from tpo.query import QueryWords
from tpo.stages import get_stage
from tpo.tasks import get_task, list_tasks

__all__ = ["NONFINITE_MODES", "NonFiniteLossError", "TPOModule", "build_heads"]

log = logging.getLogger(__name__)

HEADS_WEIGHTS = "heads.safetensors"
HEADS_CONFIG = "tpo_heads.json"
NONFINITE_MODES = ("stop", "skip")


class NonFiniteLossError(FloatingPointError):
    """A training loss term was NaN or infinite (``TPOModule(nonfinite="stop")``).

    Attributes:
        terms: the non-finite terms on this process (``lm_loss``, ``assign_loss``,
            ``<task>/<term>``), empty when another process had them.
        checkpoint: where the weights from before the bad step were saved, or ``None``.
    """

    def __init__(self, message: str, *, terms: list[str], checkpoint: Path | None) -> None:
        super().__init__(message)
        self.terms, self.checkpoint = terms, checkpoint


def _is_head_key(key: str) -> bool:
    """Whether a state-dict key belongs to what :meth:`TPOModule.save_heads` exports."""
    return key.startswith(("heads.", "backbone.task_tokens.", "query_words.")) or is_lora_parameter(key)


def _label_tokens(batch: Mapping[str, Any]) -> Tensor:
    """The number of tokens the language-modelling loss averages over (labels after the shift
    that are not -100), as a float scalar."""
    return (batch["labels"][:, 1:] != -100).sum().float()


def _select_rows(rows: Mapping[str, Any], keep: list[int]) -> dict[str, Any]:
    """The collator's target rows of one task (tensors and lists, one entry per sample of the
    task) restricted to the entries ``keep``."""
    out = {}
    for key, value in rows.items():
        if isinstance(value, Tensor):
            out[key] = value[torch.as_tensor(keep, dtype=torch.long, device=value.device)]
        else:
            out[key] = [value[i] for i in keep]
    return out


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected a folder written by TPOModule.save_heads")
    return path


def build_heads(backbone: Backbone, heads: Mapping[str, Mapping] | None = None) -> tuple[nn.ModuleDict, dict]:
    """One head per task: ``{task: {head keyword arguments}}``, default all of the backbone's tasks.

    ``embed_dim`` and the visual width come from the backbone; a ``class_path`` entry picks
    another head class (``"package.module.Class"``).

    Returns:
        the heads and their full specs (``class_path`` + keyword arguments), which rebuild them.
    """
    if backbone.task_tokens is None:
        raise ValueError("backbone: has no task tokens; call backbone.attach_task_tokens() first")
    specs = heads if heads is not None else {t: {} for t in backbone.task_tokens.task_names}
    modules, full_specs = {}, {}
    for task, spec in specs.items():
        if task not in backbone.task_tokens.task_names:
            raise ValueError(
                f"heads: task {task!r} has no task token in the backbone "
                f"(tokens for {backbone.task_tokens.task_names})"
            )
        task_obj = get_task(task)
        kwargs = dict(spec)
        cls = _import_head(task, kwargs.pop("class_path")) if "class_path" in kwargs else task_obj.head_class
        kwargs.setdefault("embed_dim", backbone.hidden_size)
        kwargs.setdefault(task_obj.visual_kwarg, backbone.visual_dim)
        unknown, valid = unknown_arguments(cls, kwargs)
        if unknown:
            raise ValueError(f"heads.{task}: {cls.__name__} has no arguments {unknown}; valid: {valid}")
        modules[task] = cls(**kwargs)
        full_specs[task] = {"class_path": f"{cls.__module__}.{cls.__qualname__}", **kwargs}
    return nn.ModuleDict(modules), full_specs


def _import_head(task: str, path: str) -> type:
    """The class ``"package.module.Class"``; a ``ValueError`` names tpo's heads otherwise."""
    module_name, _, name = path.rpartition(".")
    known = [f"{t.head_class.__module__}.{t.head_class.__qualname__}"
             for t in map(get_task, list_tasks(with_head=True))]
    hint = f"tpo's heads: {known + ['tpo.heads.SAM2MaskHead']} (or any importable 'package.module.Class')"
    try:
        module = importlib.import_module(module_name) if module_name else None
    except ImportError as err:
        raise ValueError(f"heads.{task}.class_path: cannot import {path!r} ({err}); {hint}") from err
    try:
        cls = getattr(module, name, None)
    except ImportError as err:  # a lazily imported head whose optional package is missing
        raise ValueError(f"heads.{task}.class_path: {path!r}: {err}") from err
    if not isinstance(cls, type):
        raise ValueError(f"heads.{task}.class_path: {path!r} is not a class; {hint}")
    return cls


class TPOModule(L.LightningModule):
    """A backbone with task tokens, one head per task, the TPO losses, metrics and optimizer.

    Args:
        backbone: a :class:`~tpo.backbones.Backbone`, or a spec for
            :func:`~tpo.backbones.factory.create_backbone` (``{"name": "tiny_llava", ...}`` or
            ``{"pretrained": dir}``).
        heads: ``{task: head keyword arguments}``; default one default head per task token.
        loss_weights: ``{task: w}`` (default 1 each) on the sum of that head's named terms.
        lm_weight: weight of the language-modelling loss.
        stage: ``"stage1"``, ``"stage2"``, ``"stage3"`` (see :mod:`tpo.stages`).
        lora: keyword arguments of :func:`~tpo.backbones.lora.apply_lora`, or ``None`` for none.
        learning_rates: ``{group name: lr}`` overriding the stage's rates.
        warmup_ratio: fraction of the optimizer steps spent in linear warmup.
        schedule_steps: length of the cosine schedule in optimizer steps (default: the trainer's
            estimate, which needs ``max_steps`` or ``max_epochs``).
        init_from: a Lightning checkpoint of the previous stage whose weights start this one (the
            optimizer starts afresh); ``tpo fit --config configs/stage2.yaml
            --model.init_from stage1.ckpt`` switches stages in one command.
        nonfinite: what a NaN or infinite training loss term does (checked on every step, agreed
            across processes). ``"stop"``: save a checkpoint of the weights from before the bad
            step (``nonfinite-epoch=E-step=S.ckpt`` in the checkpoint folder, else the trainer's
            ``default_root_dir``) and raise :class:`NonFiniteLossError` naming the terms
            (``lm_loss``, ``assign_loss``, ``box/loss_giou``, ...). ``"skip"``: log a warning
            with the terms and the step, count the batch in :attr:`nonfinite_skipped` (logged as
            ``train/nonfinite_skipped``, kept in checkpoints) and skip the optimizer update it is
            part of (with gradient accumulation, the whole accumulated update). Under DDP every
            process then back-propagates a zero loss (Lightning refuses a ``None`` step there)
            and no process updates.
        query_words: add the bag of the query's words (:class:`~tpo.query.QueryWords`, trained
            with the heads) to every task embedding before its head; batches then need the
            collator's ``query_ids`` / ``query_mask``. For an LLM trained from scratch (the demo),
            which does not yet route the query's words to the task token.

    Randomness inside a training step (dropout) is drawn from a generator seeded with (the torch
    seed at fit start, global step, batch index, rank) and leaves the global generator as it was,
    so a run resumed from a checkpoint draws the same dropout masks as an uninterrupted one.
    """

    def __init__(
        self,
        *,
        backbone: Backbone | Mapping[str, Any],
        heads: Mapping[str, Mapping] | None = None,
        loss_weights: Mapping[str, float] | None = None,
        lm_weight: float = 1.0,
        stage: str = "stage2",
        lora: Mapping[str, Any] | None = None,
        learning_rates: Mapping[str, float] | None = None,
        warmup_ratio: float = 0.03,
        schedule_steps: int | None = None,
        init_from: str | None = None,
        nonfinite: str = "stop",
        query_words: bool = False,
    ) -> None:
        super().__init__()
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite: expected one of {list(NONFINITE_MODES)}, got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.nonfinite_skipped = 0
        self._skip_update = False
        self._step_seed = 0
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else None)
        self.backbone = create_backbone(backbone)
        self.heads, self.head_specs = build_heads(self.backbone, heads)
        self.query_words = (
            QueryWords(
                vocab_size=self.backbone.language_model.get_input_embeddings().num_embeddings,
                embed_dim=self.backbone.hidden_size,
            )
            if query_words
            else None
        )
        self.lora = dict(lora) if lora is not None else None
        if lora is not None:
            from tpo.backbones.lora import apply_lora

            apply_lora(self.backbone, **lora)
        self.loss_weights = {t: float((loss_weights or {}).get(t, 1.0)) for t in self.heads}
        unknown = set(loss_weights or {}) - set(self.heads)
        if unknown:
            raise ValueError(
                f"loss_weights: no head for tasks {sorted(unknown)}; heads: {sorted(self.heads)}"
            )
        self.lm_weight = lm_weight
        self.stage = get_stage(stage)
        self.learning_rates = dict(learning_rates or {})
        unknown = set(self.learning_rates) - {g.name for g in self.stage.groups}
        if unknown:
            raise ValueError(
                f"learning_rates: {sorted(unknown)} are not parameter groups of stage "
                f"{self.stage.name!r} ({[g.name for g in self.stage.groups]})"
            )
        self.warmup_ratio = warmup_ratio
        self.schedule_steps = schedule_steps
        if init_from is not None:
            self._load_weights(init_from)
        self.stage.assign(self)
        self.metrics = nn.ModuleDict(
            {
                mode: nn.ModuleDict({t: get_task(t).make_metric() for t in self.heads})
                for mode in ("teacher", "generated")
            }
        )
        self.assign_metric = MeanMetric()

    def _load_weights(self, checkpoint: str) -> None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"init_from: {path} does not exist (expected a Lightning .ckpt)")
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"init_from {path}: weights do not fit this module (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); the stages must share backbone, heads and LoRA"
            )

    # ------------------------------------------------------------------ pieces
    def run_heads(self, batch: Mapping[str, Any], out: BackboneOutput) -> dict[str, tuple[Any, Tensor]]:
        """Run each head on the task embeddings of the samples that have its task token.

        Returns:
            ``{task: (head output, sample index (n,))}`` for the tasks present in the batch.
        """
        results = {}
        for task, head in self.heads.items():
            gathered = out.tasks.get(task)
            if gathered is None or len(gathered) == 0:
                continue
            task_obj = get_task(task)
            inputs = task_obj.head_inputs(out, gathered.batch_index, head)
            inputs.update(task_obj.batch_inputs(batch, gathered.batch_index))
            embeds = self.head_embeddings(batch, gathered.embeds, gathered.batch_index)
            results[task] = (head(embeds, **inputs), gathered.batch_index)
        return results

    def head_embeddings(self, batch: Mapping[str, Any], embeds: Tensor, index: Tensor) -> Tensor:
        """What the heads receive: the task embeddings ``(n, D)`` of samples ``index``, plus their
        query words when ``query_words`` is on."""
        if self.query_words is None:
            return embeds
        if batch.get("query_ids") is None or batch.get("query_mask") is None:
            raise ValueError(
                "batch: query_words is on but the batch has no 'query_ids' / 'query_mask' (the "
                "collator writes them from each item's 'query'; give the items a query)"
            )
        return self.query_words(embeds, batch["query_ids"][index], batch["query_mask"][index])

    @staticmethod
    def _target_rows(batch: Mapping[str, Any], task: str, index: Tensor) -> Mapping[str, Any]:
        rows = batch.get("targets", {}).get(task)
        if rows is None:
            raise ValueError(
                f"batch: samples {index.tolist()} have {task!r} task tokens but "
                f"batch['targets'] has no {task!r} entry"
            )
        given = torch.as_tensor(rows["sample_index"], device=index.device)
        if not torch.equal(given, index):
            raise ValueError(
                f"batch['targets'][{task!r}]: targets for samples {given.tolist()} but "
                f"task tokens in samples {index.tolist()} (one target per token, same order)"
            )
        return rows

    def assignment(self, batch: Mapping[str, Any], out: BackboneOutput) -> tuple[Tensor | None, Tensor]:
        """Task assignment: the CE on the task-begin tokens of the answers, and per-sample correctness.

        Returns:
            the CE (``None`` when the batch has no task-begin token) and ``(B,)`` bool, True where
            every task-begin token of the sample is the argmax of the logits before it. A batch
            without ``labels`` says nothing about what the model calls: all False, so the
            ``generated`` metrics count its samples as misses rather than as teacher-forced hits.
        """
        labels = batch.get("labels")
        batch_size = batch["input_ids"].shape[0]
        if labels is None:
            return None, torch.zeros(batch_size, dtype=torch.bool, device=out.logits.device)
        correct = torch.ones(batch_size, dtype=torch.bool, device=out.logits.device)
        target = labels[:, 1:]
        is_begin = torch.isin(target, self.backbone.task_tokens.begin_ids)
        if not is_begin.any():
            return None, correct
        logits = out.logits[:, :-1][is_begin]
        loss = nn.functional.cross_entropy(logits.float(), target[is_begin])
        wrong = logits.argmax(-1) != target[is_begin]
        correct[is_begin.nonzero()[:, 0][wrong]] = False
        return loss, correct

    def _touch_all(self) -> Tensor:
        """Zero times every trainable parameter: heads of tasks absent from the batch, the box
        encoder without input boxes and parts of the vision tower the LLM never reads (CLIP's
        post-layernorm) stay in the graph, so DDP needs no unused-parameter search."""
        params = [p for p in self.parameters() if p.requires_grad]
        return sum((p.sum() for p in params), torch.zeros((), device=self.device)) * 0.0

    # ------------------------------------------------------------------ steps
    def forward(self, batch: Mapping[str, Any]) -> BackboneOutput:
        return self.backbone(batch)

    def on_fit_start(self) -> None:
        self._step_seed = torch.initial_seed()

    @contextlib.contextmanager
    def _step_rng(self, batch_idx: int) -> Iterator[None]:
        """While a trainer runs the step: the global generators forked and seeded from (seed at fit
        start, global step, batch index, rank); their state outside is left untouched."""
        if self._trainer is None:
            yield
            return
        entropy = [self._step_seed, self.global_step, batch_idx, self.global_rank]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) % 2**63
        devices = [] if self.device.type == "cpu" else [self.device.index or 0]
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(seed)
            yield

    def training_losses(
        self, batch: Mapping[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The training loss and its named terms.

        Every mean (over label tokens, boxes, frames, matched spans...) is taken over all
        processes (:meth:`loss_normalizers`), so a DDP step equals one process on the union batch.

        Returns:
            ``total`` (scalar, with zero-weighted parameters for DDP), the terms (``lm_loss``,
            ``assign_loss``, ``<task>/<term>`` as the heads name them, unweighted by
            ``loss_weights``) and extra logged values (``assign_acc``, ``<task>/loss``).
        """
        out = self.backbone(batch)
        results = self.run_heads(batch, out)
        targets = {
            task: get_task(task).head_targets(self._target_rows(batch, task, index))
            for task, (_, index) in results.items()
        }
        lm_tokens = _label_tokens(batch)
        normalizers = self.loss_normalizers(lm_tokens, results, targets)
        lm_loss = out.loss * lm_tokens / normalizers["lm"]["tokens"]
        total = self.lm_weight * lm_loss
        terms = {"lm_loss": lm_loss}
        extra = {}
        assign_loss, correct = self.assignment(batch, out)
        if assign_loss is not None:
            terms["assign_loss"] = assign_loss
            extra["assign_acc"] = correct.float().mean()
        for task, (head_out, _) in results.items():
            head = self.heads[task]
            if task in normalizers:
                head_terms = head.loss(head_out, targets[task], normalizers=normalizers[task])
            else:
                head_terms = head.loss(head_out, targets[task])
            task_loss = sum(head_terms.values())
            total = total + self.loss_weights[task] * task_loss
            extra[f"{task}/loss"] = task_loss
            terms.update({f"{task}/{name}": v for name, v in head_terms.items()})
        return total + self._touch_all(), terms, extra

    def loss_normalizers(
        self, lm_tokens: Tensor, results: Mapping[str, tuple[Any, Tensor]], targets: Mapping[str, Any]
    ) -> dict[str, dict[str, Tensor]]:
        """The denominators of the losses' means, over all processes (DETR's ``num_boxes``).

        Args:
            lm_tokens: this batch's label tokens (the language-modelling loss's mean).
            results: :meth:`run_heads`' output.
            targets: ``{task: head targets}`` of the tasks in ``results``.

        The language model's label tokens and each head's ``loss_counts`` (zero for a task this
        process has no sample of) are summed over the processes in one collective, in a fixed
        order (the heads' order, each head's ``loss_count_keys``), clamped to at least 1 and
        divided by the number of processes, because DDP averages the gradients. Heads without
        ``loss_counts`` (a custom head) keep their own, per-process means.

        Returns:
            ``{"lm": {"tokens": n}, task: {key: n, ...}}``.
        """
        zero = torch.zeros((), device=self.device)
        order = [("lm", "tokens")] + [
            (task, key) for task, head in self.heads.items() for key in getattr(head, "loss_count_keys", ())
        ]
        local = {("lm", "tokens"): lm_tokens}
        for task, (head_out, _) in results.items():
            if hasattr(self.heads[task], "loss_counts"):
                counts = self.heads[task].loss_counts(head_out, targets[task])
                local.update({(task, key): value for key, value in counts.items()})
        values = torch.stack([local.get(entry, zero).to(self.device, torch.float64) for entry in order])
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="sum")
        values = (values.clamp(min=1) / world).float()
        out: dict[str, dict[str, Tensor]] = {}
        for (task, key), value in zip(order, values, strict=True):
            out.setdefault(task, {})[key] = value
        return out

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        with self._step_rng(batch_idx):
            total, terms, extra = self.training_losses(batch)
        values = {**terms, "loss": total}  # "loss" alone: the weights or loss weights overflowed
        finite = torch.stack([v.detach().float() for v in values.values()]).isfinite().tolist()
        bad = [name for name, ok in zip(values, finite, strict=True) if not ok]
        bad = [name for name in bad if name != "loss"] or bad
        if self._any_process(bool(bad)):
            return self._on_nonfinite(bad, batch_idx)
        batch_size = batch["input_ids"].shape[0]
        log = {f"train/{k}": v.detach() for k, v in {**terms, **extra, "loss": total}.items()}
        self.log_dict(log, batch_size=batch_size, prog_bar=False)
        self.log("loss", total.detach(), batch_size=batch_size, prog_bar=True, logger=False)
        return total

    def _any_process(self, flag: bool) -> bool:
        """``flag`` on any process (every process calls this; a collective under DDP)."""
        if self._trainer is None:
            return flag
        return self.trainer.strategy.reduce_boolean_decision(flag, all=False)

    def _on_nonfinite(self, bad: list[str], batch_idx: int) -> Tensor:
        step = self.global_step
        where = (f"non-finite training loss terms {bad}" if bad else
                 "a non-finite training loss term on another process (see its message)")
        epoch = self.current_epoch
        if self.nonfinite == "skip":
            self.nonfinite_skipped += 1
            log.warning("%s at step %d (epoch %d, batch %d): batch skipped (%d skipped so far)",
                        where, step, epoch, batch_idx, self.nonfinite_skipped)
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), prog_bar=False)
            self._skip_update = True
            return self._touch_all()  # zero gradients through every trainable weight (DDP)
        path = None
        if self._trainer is not None:
            callback = self.trainer.checkpoint_callback
            folder = getattr(callback, "dirpath", None) or self.trainer.default_root_dir
            path = Path(folder) / f"nonfinite-epoch={epoch}-step={step}.ckpt"
            self.trainer.save_checkpoint(path)
        saved = (f"the weights from before this step are saved in {path}" if path is not None
                 else "no checkpoint saved (no trainer)")
        raise NonFiniteLossError(
            f"{where} at step {step} (epoch {epoch}, batch {batch_idx}); training stopped, {saved}. "
            "Lower the learning rate or that term's weight, check the batch's targets, or pass "
            "TPOModule(nonfinite='skip') to skip such batches.",
            terms=bad,
            checkpoint=path,
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skip_update:  # a skipped non-finite batch: no update (AdamW skips grad-less weights)
            self._skip_update = False
            optimizer.zero_grad(set_to_none=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_skipped"] = self.nonfinite_skipped

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_skipped = int(checkpoint.get("nonfinite_skipped", 0))

    def _evaluate(self, batch: Mapping[str, Any], prefix: str) -> None:
        """Score one evaluation batch. Samples whose ``meta`` says ``padding`` (repeats that give
        every process the same number of batches, :class:`~tpo.datamodules.MultiTaskSampler`)
        are run but not scored, so each sample counts once however the split is sharded."""
        out = self.backbone(batch)
        batch_size = batch["input_ids"].shape[0]
        if out.loss is not None:
            self.log(f"{prefix}/lm_loss", out.loss, batch_size=batch_size, sync_dist=True)
        _, correct = self.assignment(batch, out)
        padding = [bool(m.get("padding", False)) for m in batch.get("meta") or [{}] * batch_size]
        scored = torch.zeros_like(correct)
        for task, (head_out, index) in self.run_heads(batch, out).items():
            rows = self._target_rows(batch, task, index)
            meta = self._meta(batch, task, index, rows)
            preds = self.heads[task].postprocess(head_out, meta)
            keep = [i for i, b in enumerate(index.tolist()) if not padding[b]]
            scored[index[keep]] = True
            preds, rows, meta = [preds[i] for i in keep], _select_rows(rows, keep), [meta[i] for i in keep]
            task_obj = get_task(task)
            task_obj.score(self.metrics["teacher"][task], preds, rows, meta)
            generated = [p if bool(correct[b]) else None
                         for p, b in zip(preds, rows["sample_index"].tolist(), strict=True)]
            task_obj.score(self.metrics["generated"][task], generated, rows, meta)
        if scored.any():
            self.assign_metric.update(correct[scored].float())

    @staticmethod
    def _meta(batch: Mapping[str, Any], task: str, index: Tensor, rows: Mapping | None) -> list[dict]:
        metas = batch.get("meta")
        if metas is None:
            raise ValueError("batch: missing 'meta' (per-sample duration / frame size for post-processing)")
        task_obj = get_task(task)
        return [task_obj.prediction_meta(metas[b], rows, i) for i, b in enumerate(index.tolist())]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _log_metrics(self, prefix: str) -> None:
        """Compute, log and reset every metric some process updated this epoch. Every process
        takes part in each metric's sync (a collective), in the same order, whether or not it saw
        that task: which metrics were updated is agreed first, in one collective."""
        entries = [(f"{prefix}/assign_acc", None, self.assign_metric)] + [
            (prefix if mode == "teacher" else f"{prefix}_generated", task, metric)
            for mode, names in self.metrics.items()
            for task, metric in names.items()
        ]
        updated = torch.tensor([m.update_called for *_, m in entries], device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            updated = self.all_gather(updated).any(0)
        for (tag, task, metric), anywhere in zip(entries, updated.tolist(), strict=True):
            if anywhere:
                with warnings.catch_warnings():  # this process may have seen none of the task
                    warnings.filterwarnings("ignore", message=".*was called before the ``update``")
                    values = metric.compute()
                if task is None:
                    self.log(tag, values.float())
                else:
                    scalars = {k: v for k, v in values.items() if v.numel() == 1}
                    self.log_dict({f"{tag}/{task}/{k}": v.float() for k, v in scalars.items()})
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> list[dict]:
        """Per sample: ``{"meta", "task", "prediction"}`` in boundary units (``None`` prediction and
        ``task`` for samples without a task token)."""
        out = self.backbone(batch)
        results: list[dict] = [{"meta": m, "task": None, "prediction": None} for m in batch["meta"]]
        for task, (head_out, index) in self.run_heads(batch, out).items():
            preds = self.heads[task].postprocess(head_out, self._meta(batch, task, index, None))
            for b, pred in zip(index.tolist(), preds, strict=True):
                results[b].update(task=task, prediction=pred)
        return results

    # ------------------------------------------------------------------ export
    def head_state(self) -> dict[str, Tensor]:
        """What :meth:`save_heads` writes: heads, task tokens, LoRA adapters and the task-token rows
        of the input embeddings and output projection."""
        state = {k: v for k, v in self.state_dict().items() if _is_head_key(k)}
        rows = self.backbone.task_tokens.trainable_token_rows()
        lm = self.backbone.language_model
        for name, module in (("input", lm.get_input_embeddings()), ("output", lm.get_output_embeddings())):
            weight = getattr(module, "weight", None)
            if weight is None:  # PEFT's trainable-token wrapper: its delta is in the state already
                continue
            state[f"token_rows.{name}"] = weight.detach()[rows]
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def save_heads(self, directory: str | Path) -> None:
        """Write the trained task parts — task embeddings, new token rows, heads, LoRA adapters —
        as ``heads.safetensors`` with ``tpo_heads.json``, to attach to another copy of the backbone
        with :meth:`load_heads` / :meth:`from_heads`. Each file is written to a temporary sibling
        and renamed into place, so an interrupted export never leaves a half-written file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / HEADS_WEIGHTS) as tmp:
            save_file(self.head_state(), str(tmp))
        config = {
            "tasks": self.backbone.task_tokens.spec_dicts(),
            "heads": self.head_specs,
            "loss_weights": self.loss_weights,
            "lm_weight": self.lm_weight,
            "lora": self.lora,
            "stage": self.stage.name,
            "hidden_size": self.backbone.hidden_size,
            "query_words": self.query_words is not None,
        }
        write_text_atomic(directory / HEADS_CONFIG, json.dumps(config, indent=2))

    def load_heads(self, directory: str | Path) -> None:
        """Load :meth:`save_heads` output into this module (same tasks, heads and LoRA layout)."""
        directory = Path(directory)
        state = load_file(str(_existing(directory / HEADS_WEIGHTS)))
        rows = {k: state.pop(k) for k in list(state) if k.startswith("token_rows.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = sorted(k for k in missing if _is_head_key(k))
        if missing or unexpected:
            raise ValueError(
                f"{directory / HEADS_WEIGHTS}: missing {missing[:5]}, unexpected {unexpected[:5]} "
                "(saved from a module with other tasks, heads or LoRA?)"
            )
        ids = self.backbone.task_tokens.trainable_token_rows()
        lm = self.backbone.language_model
        with torch.no_grad():
            for name, module in (
                ("input", lm.get_input_embeddings()),
                ("output", lm.get_output_embeddings()),
            ):
                if f"token_rows.{name}" in rows and getattr(module, "weight", None) is not None:
                    module.weight[ids] = rows[f"token_rows.{name}"].to(module.weight)

    @classmethod
    def from_heads(
        cls, directory: str | Path, backbone: Backbone | Mapping[str, Any], **overrides
    ) -> TPOModule:
        """Attach heads saved by :meth:`save_heads` to a copy of the backbone that lacks them: the task
        tokens are added to its tokenizer and embeddings, LoRA is applied as it was, then the weights
        and token rows are loaded."""
        directory = Path(directory)
        config = json.loads(_existing(directory / HEADS_CONFIG).read_text())
        backbone = create_backbone(backbone)
        if backbone.hidden_size != config["hidden_size"]:
            raise ValueError(
                f"backbone: hidden size {backbone.hidden_size}, the heads in {directory} were "
                f"trained on {config['hidden_size']}"
            )
        if backbone.task_tokens is None:
            backbone.attach_task_tokens(tasks=config["tasks"])
        kwargs = {
            "heads": config["heads"],
            "loss_weights": config["loss_weights"],
            "lm_weight": config["lm_weight"],
            "lora": config["lora"],
            "stage": config["stage"],
            "query_words": config.get("query_words", False),
            **overrides,
        }
        module = cls(backbone=backbone, **kwargs)
        module.load_heads(directory)
        return module

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        groups = self.stage.param_groups(self)
        for group in groups:
            group["lr"] = self.learning_rates.get(group["name"], group["lr"])
        optimizer = torch.optim.AdamW(groups)
        total = self.schedule_steps or self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "schedule_steps: the trainer has no step limit (max_time only); give "
                "TPOModule(schedule_steps=...) for the cosine schedule's length"
            )
        total = max(1, int(total))
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

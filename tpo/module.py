"""``TPOModule``: co-trains the task heads with the language loss.

``L = lm_weight * L_lm + sum_task w_task * sum(head.loss(...).values())``; the CE on the
task-begin tokens is part of ``L_lm`` and is logged on its own as the task-assignment loss.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import get_cosine_schedule_with_warmup

from tpo.backbones.base import Backbone, BackboneOutput
from tpo.backbones.factory import create_backbone
from tpo.backbones.lora import is_lora_parameter
from tpo.stages import get_stage
from tpo.tasks import get_task_adapter

__all__ = ["TPOModule", "build_heads"]

HEADS_WEIGHTS = "heads.safetensors"
HEADS_CONFIG = "tpo_heads.json"


def _is_head_key(key: str) -> bool:
    """Whether a state-dict key belongs to what :meth:`TPOModule.save_heads` exports."""
    return key.startswith(("heads.", "backbone.task_tokens.")) or is_lora_parameter(key)


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
        adapter = get_task_adapter(task)
        kwargs = dict(spec)
        cls = _import(kwargs.pop("class_path")) if "class_path" in kwargs else adapter.head_class
        kwargs.setdefault("embed_dim", backbone.hidden_size)
        kwargs.setdefault(adapter.visual_kwarg, backbone.visual_dim)
        modules[task] = cls(**kwargs)
        full_specs[task] = {"class_path": f"{cls.__module__}.{cls.__qualname__}", **kwargs}
    return nn.ModuleDict(modules), full_specs


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


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
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else None)
        self.backbone = create_backbone(backbone)
        self.heads, self.head_specs = build_heads(self.backbone, heads)
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
                mode: nn.ModuleDict({t: get_task_adapter(t).make_metric() for t in self.heads})
                for mode in ("teacher", "generated")
            }
        )

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
            inputs = get_task_adapter(task).head_inputs(out, gathered.batch_index, head)
            results[task] = (head(gathered.embeds, **inputs), gathered.batch_index)
        return results

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
            every task-begin token of the sample is the argmax of the logits before it.
        """
        labels = batch.get("labels")
        batch_size = batch["input_ids"].shape[0]
        correct = torch.ones(batch_size, dtype=torch.bool, device=out.logits.device)
        if labels is None:
            return None, correct
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

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        out = self.backbone(batch)
        batch_size = batch["input_ids"].shape[0]
        total = self.lm_weight * out.loss
        log = {"train/lm_loss": out.loss.detach()}
        assign_loss, correct = self.assignment(batch, out)
        if assign_loss is not None:
            log["train/assign_loss"] = assign_loss.detach()
            log["train/assign_acc"] = correct.float().mean()
        results = self.run_heads(batch, out)
        for task, (head_out, index) in results.items():
            rows = self._target_rows(batch, task, index)
            adapter = get_task_adapter(task)
            terms = self.heads[task].loss(head_out, adapter.head_targets(rows))
            task_loss = sum(terms.values())
            total = total + self.loss_weights[task] * task_loss
            log[f"train/{task}/loss"] = task_loss.detach()
            log.update({f"train/{task}/{name}": v.detach() for name, v in terms.items()})
        total = total + self._touch_all()
        log["train/loss"] = total.detach()
        self.log_dict(log, batch_size=batch_size, prog_bar=False)
        self.log("loss", total.detach(), batch_size=batch_size, prog_bar=True, logger=False)
        return total

    def _evaluate(self, batch: Mapping[str, Any], prefix: str) -> None:
        out = self.backbone(batch)
        batch_size = batch["input_ids"].shape[0]
        if out.loss is not None:
            self.log(f"{prefix}/lm_loss", out.loss, batch_size=batch_size, sync_dist=True)
        _, correct = self.assignment(batch, out)
        has_task = torch.zeros_like(correct)
        for task, (head_out, index) in self.run_heads(batch, out).items():
            has_task[index] = True
            rows = self._target_rows(batch, task, index)
            meta = self._meta(batch, task, index, rows)
            preds = self.heads[task].postprocess(head_out, meta)
            adapter = get_task_adapter(task)
            adapter.score(self.metrics["teacher"][task], preds, rows, meta)
            generated = [p if bool(correct[b]) else None for p, b in zip(preds, index.tolist(), strict=True)]
            adapter.score(self.metrics["generated"][task], generated, rows, meta)
        if has_task.any():
            self.log(
                f"{prefix}/assign_acc",
                correct[has_task].float().mean(),
                batch_size=int(has_task.sum()),
                sync_dist=True,
            )

    @staticmethod
    def _meta(batch: Mapping[str, Any], task: str, index: Tensor, rows: Mapping | None) -> list[dict]:
        metas = batch.get("meta")
        if metas is None:
            raise ValueError("batch: missing 'meta' (per-sample duration / frame size for post-processing)")
        out = []
        for i, b in enumerate(index.tolist()):
            meta = dict(metas[b])
            meta.setdefault("image_size", meta.get("frame_size"))
            if task == "mask" and rows is not None:
                meta["image_size"] = tuple(rows["masks"][i].shape[-2:])
            out.append(meta)
        return out

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _log_metrics(self, prefix: str) -> None:
        for mode, names in self.metrics.items():
            tag = prefix if mode == "teacher" else f"{prefix}_generated"
            for task, metric in names.items():
                if not metric.update_called:
                    continue
                values = metric.compute()
                self.log_dict({f"{tag}/{task}/{k}": v.float() for k, v in values.items() if v.numel() == 1})
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
        with :meth:`load_heads` / :meth:`from_heads`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.head_state(), str(directory / HEADS_WEIGHTS))
        config = {
            "tasks": self.backbone.task_tokens.spec_dicts(),
            "heads": self.head_specs,
            "loss_weights": self.loss_weights,
            "lm_weight": self.lm_weight,
            "lora": self.lora,
            "stage": self.stage.name,
            "hidden_size": self.backbone.hidden_size,
        }
        (directory / HEADS_CONFIG).write_text(json.dumps(config, indent=2))

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

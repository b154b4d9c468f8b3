"""``TaskModel``: the backbone with its task tokens, one head per task and the query words.

The model that :class:`~tpo.TPOModule` trains and :class:`~tpo.Predictor` answers with. It
knows nothing of Lightning: it runs a batch through the backbone and the heads. A batch flows::

    out = model(batch)                          # BackboneOutput: logits (B, L, V), out.tasks
    results = model.run_heads(batch, out)       # {task: (head output, sample index (n,))}
    targets = model.head_targets(batch, results)           # training: what head.loss takes
    preds, meta = model.postprocess(batch, task, head_out, index)   # boundary units

Parameter names are the backbone's (``backbone.…``, task tokens ``backbone.task_tokens.…``),
``heads.<task>.…`` and ``query_words.…``; the stage presets (:mod:`tpo.stages`) match them.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tpo.arguments import unknown_arguments
from tpo.backbones.base import Backbone, BackboneOutput
from tpo.backbones.factory import create_backbone
from tpo.query import QueryWords
from tpo.tasks import get_task, list_tasks

__all__ = ["TaskModel", "build_heads", "label_tokens", "seeded_rng"]


@contextlib.contextmanager
def seeded_rng(entropy: Sequence[int], device: torch.device) -> Iterator[None]:
    """Inside the block, torch's global generators (CPU and ``device``) are forked and seeded from
    ``entropy`` (non-negative ints, e.g. seed, step, batch, rank); outside, their state is as it
    was. Randomness in the block (dropout) then depends on ``entropy`` alone."""
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0]) % 2**63
    devices = [] if device.type == "cpu" else [device.index or 0]
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


def label_tokens(batch: Mapping[str, Any]) -> Tensor:
    """The number of tokens the language-modelling loss averages over (labels after the shift
    that are not -100), as a float scalar."""
    return (batch["labels"][:, 1:] != -100).sum().float()


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
        if task_obj.visual_kwarg not in unknown_arguments(cls, {task_obj.visual_kwarg: None})[0]:
            kwargs.setdefault(task_obj.visual_kwarg, backbone.visual_dim)  # a head that reads features
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


class TaskModel(nn.Module):
    """A backbone with task tokens, one head per task and, optionally, the query words.

    Args:
        backbone: a :class:`~tpo.backbones.Backbone` with task tokens, or a spec for
            :func:`~tpo.backbones.factory.create_backbone` (``{"name": "tiny_llava", ...}`` or
            ``{"pretrained": dir}``).
        heads: ``{task: head keyword arguments}`` (:func:`build_heads`); default one default head
            per task token.
        lora: keyword arguments of :func:`~tpo.backbones.lora.apply_lora`, or ``None`` for none.
        query_words: add the bag of the query's words (:class:`~tpo.query.QueryWords`) to every
            task embedding before its head; batches then need ``query_ids`` / ``query_mask``.

    Attributes:
        head_specs: ``{task: {"class_path": ..., **keyword arguments}}``, which rebuild the heads.
        lora: the LoRA options (``None``: none).
    """

    def __init__(
        self,
        backbone: Backbone | Mapping[str, Any],
        heads: Mapping[str, Mapping] | None = None,
        lora: Mapping[str, Any] | None = None,
        query_words: bool = False,
    ) -> None:
        super().__init__()
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

    def forward(self, batch: Mapping[str, Any]) -> BackboneOutput:
        """The backbone's output for a collated batch (``input_ids (B, L)``, media, ``labels``)."""
        return self.backbone(batch)

    # ------------------------------------------------------------------ heads
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
        """What the heads receive: the task embeddings ``(n, D)`` of samples ``index (n,)``, plus
        their query words when ``query_words`` is on."""
        if self.query_words is None:
            return embeds
        if batch.get("query_ids") is None or batch.get("query_mask") is None:
            raise ValueError(
                "batch: query_words is on but the batch has no 'query_ids' / 'query_mask' (the "
                "collator writes them from each item's 'query'; give the items a query)"
            )
        return self.query_words(embeds, batch["query_ids"][index], batch["query_mask"][index])

    @staticmethod
    def target_rows(batch: Mapping[str, Any], task: str, index: Tensor) -> Mapping[str, Any]:
        """The collator's target rows of ``task`` (``batch["targets"][task]``), checked to hold one
        row per task token, in the order of ``index (n,)``."""
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

    def head_targets(
        self, batch: Mapping[str, Any], results: Mapping[str, tuple[Any, Tensor]]
    ) -> dict[str, Any]:
        """``{task: what head.loss takes}`` for the tasks of :meth:`run_heads`' ``results``."""
        return {task: get_task(task).head_targets(self.target_rows(batch, task, index))
                for task, (_, index) in results.items()}

    @staticmethod
    def prediction_meta(
        batch: Mapping[str, Any], task: str, index: Tensor, rows: Mapping[str, Any] | None = None
    ) -> list[dict]:
        """The ``meta`` that ``head.postprocess`` reads, one dict per sample of ``index (n,)``
        (:meth:`~tpo.tasks.Task.prediction_meta` of ``batch["meta"]`` and the target ``rows``)."""
        metas = batch.get("meta")
        if metas is None:
            raise ValueError("batch: missing 'meta' (per-sample duration / frame size for post-processing)")
        task_obj = get_task(task)
        return [task_obj.prediction_meta(metas[b], rows, i) for i, b in enumerate(index.tolist())]

    def postprocess(
        self, batch: Mapping[str, Any], task: str, head_out: Any, index: Tensor,
        rows: Mapping[str, Any] | None = None,
    ) -> tuple[list, list[dict]]:
        """The predictions of ``task``'s head in boundary units, and the meta they were made with."""
        meta = self.prediction_meta(batch, task, index, rows)
        return self.heads[task].postprocess(head_out, meta), meta

    def predict(self, batch: Mapping[str, Any]) -> list[dict]:
        """Per sample: ``{"meta", "task", "prediction"}`` in boundary units (``None`` prediction and
        ``task`` for samples without a task token)."""
        out = self(batch)
        results: list[dict] = [{"meta": m, "task": None, "prediction": None} for m in batch["meta"]]
        for task, (head_out, index) in self.run_heads(batch, out).items():
            preds, _ = self.postprocess(batch, task, head_out, index)
            for b, pred in zip(index.tolist(), preds, strict=True):
                results[b].update(task=task, prediction=pred)
        return results

    # ------------------------------------------------------------------ losses
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

    def loss_normalizers(
        self, lm_tokens: Tensor, results: Mapping[str, tuple[Any, Tensor]], targets: Mapping[str, Any],
        reduce_sum: Callable[[Tensor], Tensor] | None = None, world_size: int = 1,
    ) -> dict[str, dict[str, Tensor]]:
        """The denominators of the losses' means, over all processes (DETR's ``num_boxes``).

        The language model's label tokens ``lm_tokens`` and each head's ``loss_counts`` (zero for
        a task of no sample here) are stacked in a fixed order (the heads' order, each head's
        ``loss_count_keys``), summed over the processes by ``reduce_sum`` (one collective; ``None``:
        one process), clamped to at least 1 and divided by ``world_size``, because DDP averages
        the gradients. Heads without ``loss_counts`` (a custom head) keep their own means.

        Returns:
            ``{"lm": {"tokens": n}, task: {key: n, ...}}``, float 0-dim tensors.
        """
        device = lm_tokens.device
        zero = torch.zeros((), device=device)
        order = [("lm", "tokens")] + [
            (task, key) for task, head in self.heads.items() for key in getattr(head, "loss_count_keys", ())
        ]
        local = {("lm", "tokens"): lm_tokens}
        for task, (head_out, _) in results.items():
            if hasattr(self.heads[task], "loss_counts"):
                counts = self.heads[task].loss_counts(head_out, targets[task])
                local.update({(task, key): value for key, value in counts.items()})
        values = torch.stack([local.get(entry, zero).to(device, torch.float64) for entry in order])
        if reduce_sum is not None:
            values = reduce_sum(values)
        values = (values.clamp(min=1) / world_size).float()
        normalizers: dict[str, dict[str, Tensor]] = {}
        for (task, key), value in zip(order, values, strict=True):
            normalizers.setdefault(task, {})[key] = value
        return normalizers

    def touch_parameters(self) -> Tensor:
        """A 0-dim zero that depends on every trainable parameter. Added to the loss, it keeps in
        the graph the heads of tasks absent from the batch, the box encoder without input boxes and
        the parts of the vision tower the LLM never reads (CLIP's post-layernorm), so DDP needs no
        unused-parameter search."""
        params = [p for p in self.parameters() if p.requires_grad]
        device = params[0].device if params else None
        return sum((p.sum() for p in params), torch.zeros((), device=device)) * 0.0

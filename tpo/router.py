"""Task router after UnifiedMLLM (arXiv 2408.02503): generated task calls -> heads or experts.

The language model answers with text that may hold one *task call*, written with the task's
special tokens (:class:`~tpo.tasks.TaskSpec`)::

    <box_begin>the red square [0.120, 0.300, 0.450, 0.610]<boxes>

i.e. ``begin token``, a free-text span (the expression the task is about), zero or more
grounding regions ``[x1, y1, x2, y2]`` normalised to [0, 1], and the placeholder token, which
closes the call. :class:`TaskRouter` parses calls from text or token ids and dispatches each
sample to one registered target:

- :class:`HeadTarget` (latent routing): a differentiable head receives the task embedding, the
  LLM's hidden state at the placeholder token, so gradients flow back into the LLM;
- :class:`ExpertTarget` (symbolic routing): any callable (an image editor, a detector...) receives
  the parsed :class:`TaskCall`.

Answers without a call go to text; malformed calls and calls of tasks without a target fall back
to text with a :class:`RouterWarning`, never an exception in the middle of a batch.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tpo.tasks import TaskSpec, get_task_spec, list_tasks, register_task
from tpo.tokens import resize_with_mean_rows

__all__ = [
    "ExpertTarget",
    "HeadTarget",
    "ParsedOutput",
    "RouteResult",
    "RouterWarning",
    "TaskCall",
    "TaskRouter",
]

Region = tuple[float, float, float, float]

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_REGION = re.compile(rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*$")
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


class RouterWarning(UserWarning):
    """A sample's output was routed to text because its task call was malformed or unknown."""


@dataclass(frozen=True)
class _Token:
    """A task token found in an answer: its text and, for token ids, its index in them."""

    text: str
    position: int | None


@dataclass(frozen=True)
class TaskCall:
    """One task call parsed from (or to be written into) a model's answer.

    Attributes:
        task: registered task name, e.g. ``"box"``.
        span: the text between the begin token and the placeholder, regions removed, whitespace
            collapsed (``"the red square"``).
        regions: grounding regions ``(x1, y1, x2, y2)`` normalised to [0, 1], ``x1 <= x2``,
            ``y1 <= y2``, in the order written.
        position: index of the placeholder token in the token ids the call was parsed from
            (where the task embedding is read); ``None`` for a call parsed from text.
    """

    task: str
    span: str = ""
    regions: tuple[Region, ...] = ()
    position: int | None = None

    def __post_init__(self) -> None:
        for k, region in enumerate(self.regions):
            if len(region) != 4:
                raise ValueError(f"TaskCall({self.task!r}).regions[{k}]: expected (x1, y1, x2, y2), "
                                 f"got {region}")
            x1, y1, x2, y2 = region
            if not all(0.0 <= v <= 1.0 for v in region) or x1 > x2 or y1 > y2:
                raise ValueError(f"TaskCall({self.task!r}).regions[{k}] = {region}: expected values "
                                 "in [0, 1] with x1 <= x2 and y1 <= y2")


@dataclass
class ParsedOutput:
    """One answer, parsed.

    Attributes:
        text: the answer outside its task calls (task tokens removed), stripped; for an answer
            with errors, :attr:`plain`.
        plain: the whole answer without its task tokens, stripped (what a text fallback shows).
        calls: the well-formed task calls, in order.
        errors: why the answer is malformed (empty when it is not).
    """

    text: str
    plain: str
    calls: list[TaskCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class RouteResult:
    """What one sample was routed to.

    Attributes:
        index: the sample's index in the batch.
        route: ``"latent"`` (a head), ``"symbolic"`` (an expert) or ``"text"``.
        text: for a routed call, the answer outside the call (:attr:`ParsedOutput.text`); for
            text, the whole answer without task tokens (:attr:`ParsedOutput.plain`).
        call: the dispatched call, ``None`` for text.
        output: the target's output for this sample (a head's batched output indexed at the
            sample: tensors lose their batch dimension), ``None`` for text.
    """

    index: int
    route: str
    text: str
    call: TaskCall | None = None
    output: Any = None


class HeadTarget:
    """Latent routing: ``head(task_embeds (N, D), **inputs) -> output`` over the N samples sent to it.

    Args:
        head: a differentiable module (e.g. :class:`tpo.heads.BoxHead`).
        inputs: names of per-sample inputs (keys of ``TaskRouter.route(inputs=...)``) passed to the
            head as keyword arguments, indexed at the routed samples (``visual`` -> ``visual=...``).

    The head's output is split per sample by its structure: tensors ``(N, ...)``, possibly inside
    dataclasses, mappings, tuples or lists (e.g. per decoder layer), are indexed at the sample;
    a *list returned by the head itself* holds one item per sample (its length must be ``N``).
    """

    route = "latent"

    def __init__(self, head: Callable[..., Any], *, inputs: Sequence[str] = ()) -> None:
        self.head = head
        self.inputs = tuple(inputs)


class ExpertTarget:
    """Symbolic routing: ``expert(call, **inputs) -> output``, once per sample sent to it.

    Args:
        expert: any callable, e.g. an image editor or a detector.
        inputs: names of per-sample inputs passed as keyword arguments (``image`` -> ``image=...``).
    """

    route = "symbolic"

    def __init__(self, expert: Callable[..., Any], *, inputs: Sequence[str] = ()) -> None:
        self.expert = expert
        self.inputs = tuple(inputs)


Target = HeadTarget | ExpertTarget


class TaskRouter:
    """Parse task calls from answers and dispatch each sample to its task's target.

    Args:
        tokenizer: the Hugging Face tokenizer of the model (needed to parse token ids and to add
            the tokens of new tasks); ``None`` to parse text only.
        targets: ``{task name: target}`` to register at once.
        coordinate_scale: the model writes coordinates as ``value * coordinate_scale`` (1 for
            [0, 1]; 1000 for models that write integer thousandths).
        decimals: decimals of the coordinates :meth:`format_call` writes.

    Every registered task (:func:`tpo.tasks.list_tasks`) is recognised when parsing; a
    call of a task without a target here falls back to text with a warning.
    """

    def __init__(self, *, tokenizer: Any = None, targets: Mapping[str, Target] | None = None,
                 coordinate_scale: float = 1.0, decimals: int = 3) -> None:
        if not coordinate_scale > 0:
            raise ValueError(f"coordinate_scale: expected > 0, got {coordinate_scale}")
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.coordinate_scale = float(coordinate_scale)
        self.decimals = decimals
        self._targets: dict[str, Target] = {}
        for name, target in (targets or {}).items():
            self.register(name, target)

    # ------------------------------------------------------------------ registry
    @property
    def tasks(self) -> list[str]:
        """Names of the tasks with a target, in registration order."""
        return list(self._targets)

    def target(self, task: str) -> Target:
        """The target registered for ``task``."""
        if task not in self._targets:
            raise ValueError(f"task {task!r} has no target; registered: {self.tasks}")
        return self._targets[task]

    def register(self, task: str | TaskSpec, target: Target, *, model: nn.Module | None = None) -> TaskSpec:
        """Give a task a target; a new :class:`TaskSpec` is registered and its tokens added.

        Existing tasks keep their tokens, ids and targets.

        Args:
            task: a registered task name, or a :class:`TaskSpec` (registered with
                :func:`tpo.tasks.register_task` if new).
            target: a :class:`HeadTarget` or :class:`ExpertTarget`.
            model: a Hugging Face model whose embeddings grow with the tokenizer (new rows: the
                mean of the old ones); ``None`` to leave models alone.

        Returns:
            The task's spec.

        Raises:
            ValueError: the task already has a target; the target has the wrong type; the spec's
                tokens clash with another task's.
        """
        if not isinstance(target, (HeadTarget, ExpertTarget)):
            raise ValueError(f"target: expected a HeadTarget or ExpertTarget, got {type(target).__name__}")
        spec = register_task(task).spec if isinstance(task, TaskSpec) else get_task_spec(task)
        if spec.name in self._targets:
            raise ValueError(f"task {spec.name!r} already has a target; build a new TaskRouter to "
                             "change it")
        if self.tokenizer is not None:
            vocab = self.tokenizer.get_vocab()
            missing = [tok for tok in spec.tokens if tok not in vocab]
            if missing:
                self.tokenizer.add_special_tokens({"additional_special_tokens": missing},
                                                  replace_extra_special_tokens=False)
            if model is not None:
                resize_with_mean_rows(model, len(self.tokenizer))
        self._targets[spec.name] = target
        return spec

    def _specs(self) -> dict[str, TaskSpec]:
        names = dict.fromkeys([*list_tasks(), *self._targets])
        return {name: get_task_spec(name) for name in names}

    # ------------------------------------------------------------------ text
    def format_call(self, call: TaskCall) -> str:
        """The text of ``call``: ``begin + span + " [x1, y1, x2, y2]"... + placeholder``."""
        spec = get_task_spec(call.task)
        regions = " ".join(
            "[" + ", ".join(f"{v * self.coordinate_scale:.{self.decimals}f}" for v in region) + "]"
            for region in call.regions)
        body = " ".join(part for part in (" ".join(call.span.split()), regions) if part)
        return f"{spec.begin_token}{body}{spec.placeholder_token}"

    def parse_text(self, text: str) -> ParsedOutput:
        """Parse an answer's text.

        Coordinates are divided by ``coordinate_scale``, **clamped to [0, 1]** and ordered so that
        ``x1 <= x2`` and ``y1 <= y2``. Malformed calls (a begin token without its placeholder, a
        placeholder without its begin token, another task's placeholder, a region that is not
        four numbers) are reported in :attr:`ParsedOutput.errors`, never raised.
        """
        pattern = self._token_pattern()
        pieces: list[str | _Token] = []
        cursor = 0
        for match in pattern.finditer(text):
            pieces += [text[cursor:match.start()], _Token(match.group(), None)]
            cursor = match.end()
        pieces.append(text[cursor:])
        return self._parse(pieces)

    def parse_ids(self, ids: Sequence[int] | Tensor) -> ParsedOutput:
        """Parse an answer's token ids ``(L,)``; calls carry the placeholder's position in ``ids``.

        Calls are found from the task tokens' *ids*; the ids between them are decoded as text, so
        ordinary sub-word ids that merely spell a task token (``"<", "temp", ">"``) stay text.
        Special tokens other than task tokens (padding, end of sequence) are dropped from the text.
        """
        if self.tokenizer is None:
            raise ValueError("parse_ids: the router has no tokenizer; pass TaskRouter(tokenizer=...)")
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if ids and isinstance(ids[0], list):
            raise ValueError(f"ids: expected one sequence (L,), got a batch of {len(ids)}")
        task_tokens = self._task_token_ids()
        pieces: list[str | _Token] = []
        segment: list[int] = []
        for pos, token_id in enumerate(ids):
            if token_id in task_tokens:
                pieces += [self._decode(segment), _Token(task_tokens[token_id], pos)]
                segment = []
            else:
                segment.append(token_id)
        pieces.append(self._decode(segment))
        return self._parse(pieces)

    def _task_token_ids(self) -> dict[int, str]:
        """``{token id: token text}`` of the begin and placeholder tokens in the tokenizer."""
        vocab = self.tokenizer.get_vocab()
        return {vocab[tok]: tok for spec in self._specs().values()
                for tok in (spec.begin_token, spec.placeholder_token) if tok in vocab}

    def _decode(self, segment: list[int]) -> str:
        """The text of ``segment`` ``(L,)`` ids without task tokens, special tokens dropped."""
        return self.tokenizer.decode(segment, skip_special_tokens=True) if segment else ""

    def _roles(self) -> dict[str, tuple[str, TaskSpec]]:
        """``{token text: ("begin" | "placeholder", spec)}`` of every recognised task."""
        roles = {}
        for spec in self._specs().values():
            roles[spec.begin_token] = ("begin", spec)
            roles[spec.placeholder_token] = ("placeholder", spec)
        return roles

    def _token_pattern(self) -> re.Pattern[str]:
        """A regex of the task tokens' texts, longest first (for parsing plain text)."""
        return re.compile("|".join(re.escape(t) for t in sorted(self._roles(), key=len, reverse=True)))

    def _parse(self, pieces: Sequence[str | _Token]) -> ParsedOutput:
        """Parse an answer split into text pieces and task tokens, in order."""
        roles = self._roles()
        calls, errors, outside = [], [], []
        open_: tuple[TaskSpec, list[str]] | None = None  # the open call's spec and body pieces
        for piece in pieces:
            if isinstance(piece, str):
                (outside if open_ is None else open_[1]).append(piece)
                continue
            kind, spec = roles[piece.text]
            if open_ is None:
                if kind == "placeholder":
                    errors.append(f"{spec.placeholder_token} without {spec.begin_token}")
                else:
                    open_ = (spec, [])
            elif kind == "begin":
                errors.append(f"{open_[0].begin_token} not closed by {open_[0].placeholder_token} "
                              f"before {spec.begin_token}")
                open_ = (spec, [])
            elif spec.name != open_[0].name:
                errors.append(f"{open_[0].begin_token} closed by {spec.placeholder_token}, expected "
                              f"{open_[0].placeholder_token}")
                open_ = None
            else:
                call = self._parse_call(spec, "".join(open_[1]), errors, piece.position)
                if call is not None:
                    calls.append(call)
                open_ = None
        if open_ is not None:
            errors.append(f"{open_[0].begin_token} not closed by {open_[0].placeholder_token}")
        plain = "".join(p for p in pieces if isinstance(p, str)).strip()
        if errors:
            return ParsedOutput(text=plain, plain=plain, calls=calls, errors=errors)
        return ParsedOutput(text="".join(outside).strip(), plain=plain, calls=calls)

    def _parse_call(self, spec: TaskSpec, body: str, errors: list[str],
                    position: int | None) -> TaskCall | None:
        regions = []
        for match in _BRACKETS.finditer(body):
            numbers = _REGION.match(match.group(1))
            values = [float(v) for v in numbers.groups()] if numbers else []
            if not values or not all(math.isfinite(v) for v in values):
                errors.append(f"{spec.name}: region [{match.group(1)}] is not [x1, y1, x2, y2]")
                return None
            x1, y1, x2, y2 = (min(max(v / self.coordinate_scale, 0.0), 1.0) for v in values)
            regions.append((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
        span = _BRACKETS.sub(" ", body)
        if "[" in span or "]" in span:
            errors.append(f"{spec.name}: unbalanced brackets in {body!r}")
            return None
        return TaskCall(spec.name, " ".join(span.split()), tuple(regions), position)

    # ------------------------------------------------------------------ dispatch
    def route(self, *, texts: Sequence[str] | None = None,
              sequences: Tensor | Sequence[Sequence[int]] | None = None,
              hidden_states: Tensor | None = None,
              inputs: Mapping[str, Any] | None = None) -> list[RouteResult]:
        """Parse a batch of answers and send each sample to exactly one target (or to text).

        Args:
            texts: ``B`` answers as text (symbolic routing only), or
            sequences: ``(B, L)`` token ids of the answers.
            hidden_states: ``(B, L, D)`` the LLM's last hidden states over ``sequences``; required
                when a call goes to a :class:`HeadTarget`.
            inputs: per-sample inputs of the targets, ``{name: (B, ...) tensor or length-B list}``.

        Returns:
            ``B`` results in sample order. All samples sent to one head go through it in one
            batched call (in sample order); experts are called once per sample.

        Raises:
            ValueError: before anything is dispatched — neither or both of ``texts`` and
                ``sequences``; ``hidden_states`` missing or misshapen where a head needs it; a
                target's input missing or not of batch size ``B``; after dispatch, only a head
                that returns a list with other than one item per sample sent to it.
        """
        if (texts is None) == (sequences is None):
            raise ValueError("route: pass exactly one of texts= and sequences=")
        parsed = ([self.parse_text(t) for t in texts] if texts is not None
                  else [self.parse_ids(row) for row in sequences])
        batch, inputs = len(parsed), dict(inputs or {})
        results, plan = [], {}  # plan: task -> [sample index]
        for i, out in enumerate(parsed):
            call, reason = self._choose(out)
            if call is None:
                if reason:
                    warnings.warn(f"sample {i}: {reason}; routed to text", RouterWarning, stacklevel=2)
                results.append(RouteResult(i, "text", out.plain))
                continue
            results.append(RouteResult(i, self._targets[call.task].route, out.text, call))
            plan.setdefault(call.task, []).append(i)
        self._check(plan, results, batch, sequences, hidden_states, inputs)
        for task, indices in plan.items():
            target = self._targets[task]
            if isinstance(target, HeadTarget):
                self._run_head(target, [results[i] for i in indices], hidden_states, inputs)
            else:
                for i in indices:
                    kwargs = {name: inputs[name][i] for name in target.inputs}
                    results[i].output = target.expert(results[i].call, **kwargs)
        return results

    def _choose(self, out: ParsedOutput) -> tuple[TaskCall | None, str]:
        if out.errors:
            return None, "malformed task output (" + "; ".join(out.errors) + ")"
        if not out.calls:
            return None, ""
        call = out.calls[0]
        if call.task not in self._targets:
            return None, f"task {call.task!r} has no target (targets: {self.tasks})"
        if len(out.calls) > 1:
            warnings.warn(f"{len(out.calls)} task calls in one answer; routing the first "
                          f"({call.task!r})", RouterWarning, stacklevel=3)
        return call, ""

    def _check(self, plan: dict[str, list[int]], results: list[RouteResult], batch: int,
               sequences: Any, hidden_states: Tensor | None, inputs: dict[str, Any]) -> None:
        for task, indices in plan.items():
            target = self._targets[task]
            for name in target.inputs:
                if name not in inputs:
                    raise ValueError(f"inputs: task {task!r} needs {name!r}; got {sorted(inputs)}")
                if len(inputs[name]) != batch:
                    raise ValueError(f"inputs[{name!r}]: expected {batch} samples, got {len(inputs[name])}")
            if isinstance(target, HeadTarget):
                if hidden_states is None or sequences is None:
                    raise ValueError(f"sample {indices[0]}: task {task!r} is routed to a head, which "
                                     "needs sequences= and hidden_states= (B, L, D)")
                length = len(sequences[0]) if batch else 0
                if hidden_states.ndim != 3 or tuple(hidden_states.shape[:2]) != (batch, length):
                    raise ValueError(f"hidden_states: expected (B, L, D) with (B, L) = {(batch, length)}, "
                                     f"got {tuple(hidden_states.shape)}")

    @staticmethod
    def _run_head(target: HeadTarget, results: list[RouteResult], hidden_states: Tensor,
                  inputs: dict[str, Any]) -> None:
        index = torch.tensor([r.index for r in results], device=hidden_states.device)
        position = torch.tensor([r.call.position for r in results], device=hidden_states.device)
        task_embeds = hidden_states[index, position]  # (N, D)
        kwargs = {name: _take(inputs[name], index) for name in target.inputs}
        output = target.head(task_embeds, **kwargs)
        if isinstance(output, list) and len(output) != len(results):
            raise ValueError(f"HeadTarget({type(target.head).__name__}): the head returned a list of "
                             f"{len(output)} items for {len(results)} routed samples; a list it returns "
                             "must hold one item per sample")
        for j, result in enumerate(results):
            result.output = output[j] if isinstance(output, list) else _index(output, j, len(results))


def _take(value: Any, index: Tensor) -> Any:
    """Rows ``index`` of a per-sample input: a tensor is indexed, a sequence gives a list."""
    if isinstance(value, Tensor):
        return value[index.to(value.device)]
    return [value[i] for i in index.tolist()]


def _index(value: Any, j: int, n: int) -> Any:
    """Sample ``j`` of a head's batched output ``value`` over ``n`` routed samples.

    Sliced by structure, never by a length that happens to be ``n``: a tensor ``(n, ...)`` gives
    ``(...)`` (head outputs are batched on their first dimension; a tensor with another leading
    size, or none, is shared and kept); dataclasses, mappings, tuples and lists are rebuilt item by
    item, so ``TemporalGroundingOutput.aux``, a list over decoder layers of ``(spans (n, Q, 2),
    logits (n, Q))``, becomes a list over the same layers of ``(spans (Q, 2), logits (Q,))``; other
    values (``grid_size``, ``None``, numbers, strings) are kept.
    """
    if isinstance(value, Tensor):
        return value[j] if value.ndim and value.shape[0] == n else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _index(getattr(value, f.name), j, n)
                                             for f in dataclasses.fields(value) if f.init})
    if isinstance(value, Mapping):
        return {k: _index(v, j, n) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_index(v, j, n) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_index(v, j, n) for v in value)
    return value

"""``Task``: everything the library knows about one task, in one object.

A task's object says which special tokens announce it (:class:`~tpo.tasks.registry.TaskSpec`),
which head serves it and how the head is fed (``head_inputs`` from the backbone's output,
``batch_inputs`` from the batch), how the collator packs its targets (``pack_targets``) and the
head takes them (``head_targets``), how predictions are scored (``make_metric``, ``score``,
``headline``), how its instructions read (``templates``, ``prompt_fields``, ``textual_answer``)
and what a :class:`~tpo.Predictor` answer carries (``answer_fields``). The data flow of a batch::

    collator: item["target"] --pack_targets--> batch["targets"][task] (rows)
    model:    BackboneOutput --head_inputs/batch_inputs--> head(...) --> output
    loss:     rows --head_targets--> head.loss(output, targets)
    metrics:  head.postprocess(output, prediction_meta(...)) --score--> metric

Subclass it for a new task, set the class attributes, override what differs, and register an
instance with :func:`tpo.tasks.register_task`; a bare ``Task(spec)`` is a token-only task (no
head: the router may send it to an external expert).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from tpo.tasks.registry import TaskSpec

if TYPE_CHECKING:
    from torchmetrics import Metric

    from tpo.backbones.base import BackboneOutput

__all__ = ["Task", "frame_options"]


def frame_options(num_frames: int | None, sampling: str | None) -> dict[str, Any]:
    """The video datasets' ``num_frames`` / ``sampling`` keyword arguments that are set."""
    return {k: v for k, v in (("num_frames", num_frames), ("sampling", sampling)) if v is not None}


class Task:
    """One task. Class attributes (override in a subclass):

    Attributes:
        head_class: the default head (``None``: a token-only task).
        visual_kwarg: the head constructor argument that takes the backbone's visual width.
        headline: the metric key shown in tables.
        templates: instruction paraphrases, ``str.format`` strings with ``{query}`` and the
            fields of :meth:`prompt_fields`.
        default_query: what an instruction names when a sample gives no expression.
        dataset_formats: the public formats (:mod:`tpo.datamodules.formats`) read into this
            task's samples.
        dataset_class: the :class:`~tpo.datamodules.datasets.TaskDataset` of its samples.
        textual_form: whether an answer can be written as text and read back
            (:meth:`textual_answer` and :meth:`parse_textual_answer`; the ``textual`` ablation).

    Args:
        spec: the task's special tokens.
    """

    head_class: type[nn.Module] | None = None
    visual_kwarg: str = "visual_dim"
    headline: str | None = None
    templates: tuple[str, ...] = ()
    default_query: str = "the object"
    dataset_formats: tuple[str, ...] = ()
    dataset_class: type | None = None
    textual_form: bool = False

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec})"

    def _needs_head(self, what: str) -> None:
        if self.head_class is None:
            raise ValueError(f"task {self.name!r}: a token-only task has no {what}")

    # ------------------------------------------------------------------ model side
    def make_metric(self) -> Metric:
        """A new metric object for this task's predictions."""
        self._needs_head("metric")
        raise NotImplementedError

    def head_inputs(self, out: BackboneOutput, index: Tensor, head: nn.Module) -> dict[str, Any]:
        """Keyword arguments of ``head.forward`` (besides the task embeddings) for the samples
        ``index (n,)``, cut out of the backbone's output."""
        self._needs_head("head inputs")
        raise NotImplementedError

    def batch_inputs(self, batch: Mapping[str, Any], index: Tensor) -> dict[str, Any]:
        """More keyword arguments of ``head.forward`` taken from the batch itself; none here."""
        return {}

    # ------------------------------------------------------------------ targets
    def pack_targets(self, targets: Sequence[Mapping[str, Any]], ids: Sequence[Any]) -> dict[str, Any]:
        """The collator's rows of this task: each key of the items' ``target`` dicts stacked
        over the task's samples (``ids`` name them in errors)."""
        rows: dict[str, Any] = {}
        for key in targets[0]:
            values = [t[key] for t in targets]
            shapes = {np.shape(v) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"targets[{self.name!r}][{key!r}]: samples {list(ids)} have shapes "
                    f"{sorted(shapes)}; resize them to one size (frame_size)"
                )
            rows[key] = torch.as_tensor(np.stack(values))
        return rows

    def head_targets(self, rows: Mapping[str, Any]) -> Any:
        """The targets ``head.loss`` takes, from the collator's rows (the rows without their
        ``sample_index``)."""
        return {k: v for k, v in rows.items() if k != "sample_index"}

    # ------------------------------------------------------------------ evaluation
    def prediction_meta(self, meta: Mapping[str, Any], rows: Mapping[str, Any] | None, i: int) -> dict:
        """The ``meta`` that ``head.postprocess`` reads for the ``i``-th sample of the task
        (``image_size`` defaults to the frame size)."""
        meta = dict(meta)
        meta.setdefault("image_size", meta.get("frame_size"))
        return meta

    def score(self, metric: Metric, predictions: Sequence[Any], rows: Mapping[str, Any],
              meta: Sequence[Mapping[str, Any]]) -> None:
        """Update ``metric`` with post-processed predictions in boundary units; a ``None``
        prediction is a miss (the model did not call the task)."""
        self._needs_head("score")
        raise NotImplementedError

    # ------------------------------------------------------------------ data
    def make_dataset(self, samples: Sequence[Any], *, media_root: str | None = None,
                     num_frames: int | None = None, sampling: str | None = None, **options: Any):
        """The task dataset of ``samples`` (records of :mod:`tpo.datamodules.samples`);
        ``num_frames`` / ``sampling`` apply to video tasks, ``options`` go to the dataset."""
        self._needs_head("dataset")
        return self.dataset_class(samples, **frame_options(num_frames, sampling), **options)

    def read_synthetic(self, data: Any, split: str) -> list:
        """This task's samples of a :class:`~tpo.datamodules.synthetic.SyntheticDataset` split
        (``data.path(split, task)``), read back through the public format reader."""
        raise ValueError(f"task {self.name!r}: the synthetic generator writes no data for it")

    # ------------------------------------------------------------------ text
    def prompt_fields(self) -> dict[str, str]:
        """Fields of the templates besides ``{query}``; none here."""
        return {}

    def textual_answer(self, **values: Any) -> str:
        """The answer written as text (the ``textual`` ablation); none here."""
        raise ValueError(f"task {self.name!r}: no textual answer")

    def parse_textual_answer(self, text: str, meta: Mapping[str, Any]) -> Any:
        """The prediction (boundary units, as ``head.postprocess`` gives) that a generated
        :meth:`textual_answer` stands for, or ``None`` (a miss) when ``text`` holds none; ``meta``
        is the sample's (``duration``, ``frame_size``, ``timestamps``). Tasks with
        :attr:`textual_form` override it."""
        raise ValueError(f"task {self.name!r}: has no textual form (Task.textual_form is False), so "
                         "no answer of it can be read from text")

    def draw(self, prediction: Any, rows: Mapping[str, Any], row: int, meta: Mapping[str, Any],
             frames: np.ndarray, folder: Any) -> Any:
        """Draw one prediction against its target (:mod:`tpo.viz`) into ``folder``; ``rows`` are
        the collator's rows, ``row`` the sample's, ``frames (T, H, W, 3)`` uint8. Returns the
        file written; nothing here."""
        return None

    def answer_fields(self, prediction: Any) -> dict[str, Any]:
        """The :class:`~tpo.Answer` fields (``spans``, ``boxes``, ``track``, ``masks``,
        ``scores``) a prediction fills; none here."""
        return {}

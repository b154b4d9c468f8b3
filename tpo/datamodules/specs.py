"""Datasets named by their on-disk format, so YAML configs can describe them.

```yaml
data:
  class_path: tpo.datamodules.MultiTaskDataModule
  init_args:
    train:
      temporal: {format: qvhighlights, path: data/highlight_train_release.jsonl,
                 media_root: data/videos, options: {num_frames: 16, sampling: random}}
      track: {format: got10k, path: data/got10k, read_options: {split: train}}
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from tpo.datamodules import formats
from tpo.datamodules.datasets import ConversationDataset, TaskDataset
from tpo.tasks import get_task, list_tasks

__all__ = ["DatasetSpec", "format_task", "known_formats"]

CONVERSATION_FORMATS = ("llava",)


def known_formats() -> dict[str, str]:
    """``{format: task}`` for every format a registered task reads
    (:attr:`tpo.tasks.Task.dataset_formats`) and the conversation formats."""
    out = {fmt: name for name in list_tasks(with_head=True) for fmt in get_task(name).dataset_formats}
    return out | dict.fromkeys(CONVERSATION_FORMATS, ConversationDataset.task)


def format_task(fmt: str) -> str:
    """The task whose samples the format ``fmt`` holds; a ``ValueError`` lists the formats."""
    formats_ = known_formats()
    if fmt not in formats_:
        raise ValueError(f"format: expected one of {sorted(formats_)}, got {fmt!r}")
    return formats_[fmt]


@dataclass
class DatasetSpec:
    """A task dataset given by format and paths; :meth:`build` reads it.

    Attributes:
        format: one of :func:`known_formats` (``refcoco_flat`` is the flat grounding JSON).
        path: what the format's reader takes first: the annotation file (charades_sta,
            qvhighlights, activitynet, refcoco's ``refs(unc).p``, refcoco_flat, llava) or the
            dataset root (lasot, got10k, davis, refytvos, mevis).
        media_root: the video folder (moment formats), the image folder (refcoco, refcoco_flat)
            or the media root of LLaVA paths.
        read_options: more keyword arguments of the reader (e.g. ``durations`` for Charades-STA,
            ``instances_path`` and ``split`` for RefCOCO, ``split`` for GOT-10k / DAVIS /
            Ref-YouTube-VOS / MeViS, ``clip_len`` for QVHighlights).
        options: keyword arguments of the task dataset (``num_frames``, ``sampling``,
            ``frame_size``, ``on_error``, ``seed``, ...).
    """

    format: str
    path: str
    media_root: str | None = None
    read_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        format_task(self.format)

    @property
    def task(self) -> str:
        return format_task(self.format)

    def read(self) -> list:
        """The format reader's records."""
        media = os.fspath(self.media_root) if self.media_root else ""
        if self.format == "refcoco":
            options = dict(self.read_options)
            if "instances_path" not in options:
                raise ValueError(f"{self.path}: RefCOCO needs read_options.instances_path "
                                 "(the instances.json beside refs(unc).p)")
            return formats.refcoco.read(self.path, options.pop("instances_path"), media,
                                        **options)
        if self.format == "refcoco_flat":
            return formats.refcoco.read_flat(self.path, media, **self.read_options)
        if self.format == "llava":
            return formats.llava.read(self.path, media, **self.read_options)
        return getattr(formats, self.format).read(self.path, **self.read_options)

    def build(self) -> TaskDataset:
        """Read the records and wrap them in the task's dataset."""
        samples = self.read()
        if self.task == ConversationDataset.task:
            return ConversationDataset(samples, **self.options)
        try:
            return get_task(self.task).make_dataset(samples, media_root=self.media_root, **self.options)
        except ValueError as err:
            raise ValueError(f"{self.path}: {err}") from err

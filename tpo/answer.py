"""The :class:`Answer` to one question: generated text plus the called task's prediction.

    generated ids --answer_text--> text (task tokens kept, eos / padding dropped)
    head prediction --get_task(task).answer_fields--> spans / boxes / track / masks / scores
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from tpo.tasks import get_task
from tpo.tokens import TaskTokens

__all__ = ["Answer", "answer_text", "make_answer"]


@dataclass
class Answer:
    """The answer to one question.

    Attributes:
        text: the generated text (task tokens kept, e.g. ``"<time_begin><temp>"``; end-of-sequence
            and padding dropped).
        task: the task the model called (``"temporal"``, ``"box"``, ``"track"``, ``"mask"``), or
            ``None`` for a text answer.
        spans: temporal: ``(K, 2)`` ``[start_s, end_s]`` seconds, best first.
        boxes: box: ``(1, 4)`` ``[x1, y1, x2, y2]`` pixels of the input image.
        track: track: ``(T, 4)`` ``[x, y, w, h]`` pixels, one box per frame read.
        masks: mask: ``(T, H, W)`` bool at the frame size, one mask per frame read.
        scores: temporal ``(K,)`` foreground probability of each span; track ``(T,)`` visibility
            probability; mask ``(T,)`` predicted IoU.
        timestamps: ``(T,)`` seconds of the frames the model read (``(1,)`` zero for an image).
        prediction: the head's post-processed prediction object, unchanged.
    """

    text: str
    task: str | None = None
    spans: Tensor | None = None
    boxes: Tensor | None = None
    track: Tensor | None = None
    masks: Tensor | None = None
    scores: Tensor | None = None
    timestamps: np.ndarray | None = None
    prediction: Any = None


def answer_text(tokenizer: Any, task_tokens: TaskTokens, ids: Tensor, task: str | None) -> str:
    """Decode generated ``ids (n,)`` (a call's task-begin token last) without eos and padding;
    a task call gets its placeholder token appended, as a teacher-forced answer reads."""
    drop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    kept = [i for i in ids.tolist() if i not in drop]
    if task is not None:
        kept.append(int(task_tokens.placeholder_ids[task_tokens.task_names.index(task)]))
    return tokenizer.decode(kept, skip_special_tokens=False).strip()


def make_answer(text: str, task: str | None, prediction: Any, timestamps: np.ndarray | None) -> Answer:
    """An :class:`Answer` whose task fields come from ``get_task(task).answer_fields(prediction)``."""
    fields = get_task(task).answer_fields(prediction) if task is not None else {}
    return Answer(text=text, task=task, timestamps=timestamps, prediction=prediction, **fields)

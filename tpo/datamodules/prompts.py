"""Instruction templates per task and answers that carry the task tokens.

An answer starts with the task's begin token followed by its placeholder, e.g.
``"<time_begin><temp>"`` (TPO's stage-1 assignment target); the tracking instruction carries the
input-box token (``<track_box>``) whose embedding encodes the first-frame box. ``textual=True``
writes the answer as numbers instead (an ablation: no head, the LM answers in text).
Paraphrases are picked by a seeded generator, so a sample's prompt is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tpo.tasks import get_task

__all__ = ["Prompt", "make_prompt", "textual_answer"]


@dataclass(frozen=True)
class Prompt:
    """One instruction, its answer (what the LM loss is taken on) and the query the instruction
    names (the expression the heads read, see :class:`tpo.query.QueryWords`)."""

    instruction: str
    answer: str
    query: str = ""


def textual_answer(task: str, **values) -> str:
    """The task's answer as text (:meth:`tpo.tasks.Task.textual_answer`): ``"from 1.0 to 2.5
    seconds"`` for moments (``windows_s``), ``[x1, y1, x2, y2]`` normalised for a box (``box``),
    one such box per frame for tracks (``boxes``). Masks have no textual form."""
    return get_task(task).textual_answer(**values)


def make_prompt(task: str, query: str | None = None, *, seed: int | np.random.Generator = 0,
                template: int | None = None, textual: bool = False, echo_query: bool = False,
                **answer_values) -> Prompt:
    """The instruction and answer of one task sample.

    Args:
        task: a registered task with templates (:attr:`tpo.tasks.Task.templates`).
        query: the sentence / expression naming what to find (the task's ``default_query`` when
            ``None``).
        seed: an int or a generator choosing the paraphrase.
        template: a fixed paraphrase index instead of a random one.
        textual: answer with numbers (see :func:`textual_answer`, which takes ``answer_values``).
        echo_query: the answer first restates the query, then calls the task (or gives the
            numbers): ``"the red circle <box_begin><boxes>"``, as grounded captioners phrase a
            region (Kosmos-2, Shikra). The task token then sits a few tokens after the words
            naming the object, in text the LM itself wrote, instead of a whole prompt away.

    Returns:
        A :class:`Prompt`; with ``textual=False`` its answer is ``begin_token + placeholder_token``.
    """
    task_obj = get_task(task)
    if not task_obj.templates:
        raise ValueError(f"task {task!r}: has no instruction templates (Task.templates)")
    options = task_obj.templates
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    index = int(rng.integers(len(options))) if template is None else template
    query = (query or task_obj.default_query).strip().rstrip(".")
    instruction = options[index].format(query=query, **task_obj.prompt_fields())
    answer = (task_obj.textual_answer(**answer_values) if textual
              else task_obj.spec.begin_token + task_obj.spec.placeholder_token)
    return Prompt(instruction, f"{query} {answer}" if echo_query else answer, query)

"""Instruction templates per task and answers that carry the task tokens.

An answer starts with the task's begin token followed by its placeholder, e.g.
``"<time_begin><temp>"`` (TPO's stage-1 assignment target); the tracking instruction carries the
input-box token (``<track_box>``) whose embedding encodes the first-frame box. ``textual=True``
writes the answer as numbers instead (an ablation: no head, the LM answers in text).
Paraphrases are picked by a seeded generator, so a sample's prompt is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tpo.tokens import get_task_spec

__all__ = ["TEMPLATES", "Prompt", "make_prompt", "textual_answer"]

TEMPLATES: dict[str, tuple[str, ...]] = {
    "temporal": (
        "When does this happen in the video: {query}",
        "Find the moment in the video that matches: {query}",
        "At what time in the video can we see the following? {query}",
        "Give the start and end of the segment where: {query}",
        "Localize the moment described by this sentence: {query}",
    ),
    "box": (
        "Where is {query} in the image?",
        "Give the bounding box of {query}.",
        "Locate {query} in the picture.",
        "Find {query} and mark it with a box.",
    ),
    "track": (
        "Track {query} given at {box} through the video.",
        "The target is {query} at {box} in the first frame. Follow it in every frame.",
        "Follow {query} starting from {box}.",
    ),
    "mask": (
        "Segment {query} in the video.",
        "Give the masks of {query} in every frame.",
        "Which pixels belong to {query}? Segment it.",
        "Please segment {query}.",
    ),
}
DEFAULT_TARGET = {"temporal": "the event", "box": "the object", "track": "the object",
                  "mask": "the object"}


@dataclass(frozen=True)
class Prompt:
    """One instruction, its answer (what the LM loss is taken on) and the query the instruction
    names (the expression the heads read, see :class:`tpo.query.QueryWords`)."""

    instruction: str
    answer: str
    query: str = ""


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def textual_answer(task: str, *, windows_s: np.ndarray | None = None,
                   box: np.ndarray | None = None, boxes: np.ndarray | None = None) -> str:
    """Answer as text: ``"from 1.0 to 2.5 seconds"`` for moments, ``[x1, y1, x2, y2]`` normalised
    for a box, one such box per frame for tracks. Masks have no textual form."""
    if task == "temporal" and windows_s is not None:
        return "; ".join(f"from {s:.1f} to {e:.1f} seconds" for s, e in np.asarray(windows_s))
    if task == "box" and box is not None:
        return _fmt(box)
    if task == "track" and boxes is not None:
        return " ".join(_fmt(b) for b in boxes)
    raise ValueError(f"task {task!r}: no textual answer (temporal needs windows_s, box needs box, "
                     "track needs boxes; masks have none)")


def make_prompt(task: str, query: str | None = None, *, seed: int | np.random.Generator = 0,
                template: int | None = None, textual: bool = False, **answer_values) -> Prompt:
    """The instruction and answer of one task sample.

    Args:
        task: ``"temporal"``, ``"box"``, ``"track"`` or ``"mask"`` (a task registered in
            :mod:`tpo.tokens` with templates here).
        query: the sentence / expression naming what to find (a generic phrase when ``None``).
        seed: an int or a generator choosing the paraphrase.
        template: a fixed paraphrase index instead of a random one.
        textual: answer with numbers (see :func:`textual_answer`, which takes ``answer_values``).

    Returns:
        A :class:`Prompt`; with ``textual=False`` its answer is ``begin_token + placeholder_token``.
    """
    if task not in TEMPLATES:
        raise ValueError(f"task: expected one of {sorted(TEMPLATES)}, got {task!r}")
    spec = get_task_spec(task)
    options = TEMPLATES[task]
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    index = int(rng.integers(len(options))) if template is None else template
    query = (query or DEFAULT_TARGET[task]).strip().rstrip(".")
    fields = {"query": query}
    if task == "track":
        fields["box"] = spec.input_token
    instruction = options[index].format(**fields)
    if textual:
        return Prompt(instruction, textual_answer(task, **answer_values), query)
    return Prompt(instruction, spec.begin_token + spec.placeholder_token, query)

"""Chat formats: how a conversation's turns become the text a backbone reads.

A :class:`ChatFormat` holds the strings around each turn. :func:`chat_format_from_template`
derives them from a Hugging Face processor's (or tokenizer's) chat template by rendering two
conversations of sentinel texts with ``apply_chat_template`` and cutting the renderings at the
sentinels, so every model family trains and generates with the format it was instruction-tuned
with (Qwen's ``<|im_start|>user\\n ... <|im_end|>``, InternVL's, LLaVA-OneVision's...), while a
model without a template keeps LLaVA-1.5's ``USER: ... ASSISTANT:``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ChatFormat", "chat_format_from_template"]

_USER_1, _ANSWER_1, _USER_2 = "Q1xq7", "A1xa7", "Q2xq7"


@dataclass(frozen=True)
class ChatFormat:
    """How turns become text::

        system + user + instruction + assistant + answer_lead + answer + answer_end, ...

    turns joined by ``turn_end``. ``answer_end`` ``None`` ends an answer with the tokenizer's EOS
    token (when the collator adds one). The default is LLaVA-1.5's ``USER: ... ASSISTANT: ...``.

    ``assistant`` must not end in a space: the space goes in ``answer_lead``, so the prompt
    tokenises the same alone and followed by the answer.
    """

    system: str = ""
    user: str = "USER: "
    assistant: str = " ASSISTANT:"
    turn_end: str = "\n"
    answer_lead: str = " "
    answer_end: str | None = None


def chat_format_from_template(processor: Any) -> ChatFormat | None:
    """The :class:`ChatFormat` of ``processor``'s chat template, or ``None`` without a template.

    Args:
        processor: a Hugging Face processor or tokenizer with ``chat_template`` and
            ``apply_chat_template``.

    Raises:
        ValueError: the template's renderings do not split into a system part, per-turn prefixes
            and an answer ending (e.g. it drops earlier turns, or rewrites the texts).
    """
    if not getattr(processor, "chat_template", None):
        return None
    one = _render(processor, [_message("user", _USER_1)])
    two = _render(processor, [_message("user", _USER_1), _message("assistant", _ANSWER_1),
                              _message("user", _USER_2)])
    if one.count(_USER_1) != 1 or any(two.count(s) != 1 for s in (_USER_1, _ANSWER_1, _USER_2)):
        raise ValueError(f"{type(processor).__name__}.chat_template: does not render each turn's text once")
    before_user, generation_prompt = one.split(_USER_1)
    between = two.split(_ANSWER_1)[1].split(_USER_2)[0]
    eos = getattr(getattr(processor, "tokenizer", processor), "eos_token", None)
    if eos and eos in between:
        cut = between.index(eos) + len(eos)
        answer_end, rest = between[:cut], between[cut:]
    else:  # the template ends answers without the EOS token: the collator adds it
        answer_end, rest = None, between
    user = _common_suffix(before_user, rest)
    in_history = two.split(_USER_1)[1].split(_ANSWER_1)[0]
    answer_lead = in_history[len(generation_prompt):] if in_history.startswith(generation_prompt) else ""
    assistant = generation_prompt.rstrip(" ")  # a trailing space belongs to the answer
    answer_lead = generation_prompt[len(assistant):] + answer_lead
    return ChatFormat(system=before_user[: len(before_user) - len(user)], user=user, assistant=assistant,
                      turn_end=rest[: len(rest) - len(user)], answer_lead=answer_lead, answer_end=answer_end)


def _message(role: str, text: str) -> dict:
    return {"role": role, "content": [{"type": "text", "text": text}]}


def _render(processor: Any, conversation: list[dict]) -> str:
    rendered = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return rendered if isinstance(rendered, str) else rendered[0]


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return a[len(a) - n:]

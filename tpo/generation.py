"""Generation with task calls: prefill, ``generate``, one placeholder step.

Any backbone that encodes its media apart from the LLM (``encode_visual`` -> an
:class:`~tpo.backbones.base.EncodedVisual`, the model taking ``mm_encoder_outputs``) generates
here: LLaVA, Qwen-VL and InternVL. Positions come from the backbone (:meth:`Backbone.position_ids`:
``(B, L)``, or Qwen's M-RoPE ``(3, B, L)``), so every step numbers tokens as training does.

The data flow of :func:`generate_with_tasks` for a left-padded batch of ``B`` prompts of length
``L`` (the collator's generation batch)::

    batch --encode_visual--> mm features (for the LLM), visual (B, T, N, D_v) (for the heads)
    batch --position_ids--> positions (..., B, L)
    prompt[:, :-1] --lm_forward (<track_box> embeddings injected)--> cache
    cache, prompt --model.generate (greedy; eos and task-begin tokens stop)--> new (B, n), cache
    cache, [new[:, -1], placeholder] --model, one step--> hidden (B, 2, D)
    hidden[:, PLACEHOLDER_STEP] of the samples that stopped on a task-begin token --> out.tasks

The prompt is run before ``generate`` (not by it) because its ``<track_box>`` tokens take the
given boxes in that forward only. The placeholder token's input embedding is the learned task
embedding (the backbone's injection hook puts it in); it attends to the prompt and to the
generated tokens up to its task-begin token, so its last hidden state is the task embedding a
teacher-forced ``<begin><placeholder>`` answer gives. Samples of a batch are generated together;
the only per-token loop is ``generate``'s own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tpo.backbones.base import Backbone, BackboneOutput
from tpo.tokens import TaskGather

__all__ = ["Generation", "PLACEHOLDER_STEP", "UNSUPPORTED_GENERATE", "check_generate_kwargs",
           "generate_with_tasks", "special_input_ids"]

UNSUPPORTED_GENERATE = ("num_beams", "num_return_sequences", "eos_token_id", "pad_token_id",
                        "return_dict_in_generate", "input_ids", "attention_mask", "cache",
                        "past_key_values")
"""``generate`` arguments :func:`generate_with_tasks` sets itself."""

PLACEHOLDER_STEP = 1
"""Where the placeholder token sits in the two-token step after ``generate``."""


@dataclass
class Generation:
    """What :func:`generate_with_tasks` returns.

    Attributes:
        tokens: ``(B, n)`` generated tokens (padding after a sequence stops).
        stop_at: ``(B,)`` index in ``tokens`` of each sample's stop token (``n - 1`` without one).
        calls: ``(B,)`` bool, the sample stopped on a task-begin token.
        task_index: ``(B,)`` the task it called (index into ``task_tokens.task_names``; 0 where
            ``calls`` is False).
        out: ``None`` when no sample called a task; else the placeholder step's ``logits
            (B, 2, V)`` and ``hidden_states (B, 2, D)`` with the visual features of the batch
            (``visual``, ``visual_mask``, ``visual_grid``, ``frames``) and ``tasks``: the task
            embeddings of the calling samples, ``TaskGather`` per task.
    """

    tokens: Tensor
    stop_at: Tensor
    calls: Tensor
    task_index: Tensor
    out: BackboneOutput | None

    def answer_ids(self, b: int) -> Tensor:
        """Sample ``b``'s generated tokens up to and with its stop token."""
        return self.tokens[b, : int(self.stop_at[b]) + 1]


def check_generate_kwargs(generate_kwargs: Mapping[str, Any]) -> None:
    """A ``ValueError`` naming the :data:`UNSUPPORTED_GENERATE` arguments given."""
    bad = [k for k in UNSUPPORTED_GENERATE if k in generate_kwargs]
    if bad:
        raise ValueError(f"generate_kwargs: {bad} are set by the Predictor (one greedy or sampled "
                         "sequence per question, task-begin tokens stop it)")


def special_input_ids(backbone: Backbone) -> list[int]:
    """Media and input-box token ids: never generated, never last in a prompt."""
    return [*backbone.media_token_ids(), *backbone.task_tokens.input_ids_of_boxes.tolist()]


@torch.no_grad()
def generate_with_tasks(backbone: Backbone, batch: Mapping[str, Any], *, max_new_tokens: int,
                        **generate_kwargs) -> Generation:
    """Generate answers for a left-padded batch and compute the task embedding of each task call.

    Args:
        backbone: a backbone with task tokens and ``encode_visual`` (see the module docstring).
        batch: the collator's generation batch (``input_ids (B, L)``, ``attention_mask (B, L)``,
            ``prompt_boxes (K, 4)``, pixel values), on the backbone's device.
        max_new_tokens: generation length limit (``generate_kwargs`` may override it).
        generate_kwargs: passed to ``generate`` (``do_sample``, ``temperature``...); greedy by
            default. Media, placeholder and input-box tokens are always suppressed.
    """
    check_generate_kwargs(generate_kwargs)
    encoded = backbone.encode_visual(batch)
    positions = backbone.position_ids(batch)
    new, cache = _generate(backbone, batch, encoded.mm_encoder_outputs, positions,
                           {"max_new_tokens": max_new_tokens, **generate_kwargs})
    begin_ids = backbone.task_tokens.begin_ids
    stops = torch.isin(new, torch.cat([begin_ids, begin_ids.new_tensor([backbone.tokenizer.eos_token_id])]))
    stop_at = torch.where(stops.any(1), stops.long().argmax(1), new.shape[1] - 1)  # (B,)
    is_begin = new.gather(1, stop_at[:, None]) == begin_ids  # (B, num_tasks)
    calls, task_index = is_begin.any(1), is_begin.long().argmax(1)
    out = None
    if bool(calls.any()):
        out = _task_step(backbone, cache, new, batch["attention_mask"], positions, stop_at, task_index)
        out = dataclasses.replace(out, **encoded.fields)
        for t, name in enumerate(backbone.task_tokens.task_names):
            rows = (calls & (task_index == t)).nonzero().flatten()
            position = torch.full_like(rows, PLACEHOLDER_STEP)
            out.tasks[name] = TaskGather(out.hidden_states[rows, position], rows, position)
    return Generation(tokens=new, stop_at=stop_at, calls=calls, task_index=task_index, out=out)


def _generate(backbone: Backbone, batch: Mapping[str, Any], mm: dict, positions: Tensor, kwargs: dict
              ) -> tuple[Tensor, Any]:
    """Run the prompt but its last token through the LLM (media features from ``mm``, input boxes
    injected), then ``generate`` from that cache.

    Returns:
        ``(B, n)`` generated tokens and the cache, which holds the prompt and all generated tokens
        but the last.
    """
    tokens, tokenizer = backbone.task_tokens, backbone.tokenizer
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    if not bool(mask[:, -1].all()):
        raise ValueError("collator: prompts must be left-padded for generation")
    special = special_input_ids(backbone)
    if torch.isin(input_ids[:, -1], input_ids.new_tensor(special)).any():
        raise ValueError("prompt: ends in a media or input-box token; the chat format must end "
                         "the prompt with text (the assistant prefix)")
    prefix = {"input_ids": input_ids[:, :-1], "attention_mask": mask[:, :-1],
              "prompt_boxes": batch["prompt_boxes"]}
    prefill = backbone.lm_forward(prefix, mm_encoder_outputs=mm or None, position_ids=positions[..., :-1],
                                  use_cache=True)
    eos = tokenizer.eos_token_id
    pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    kwargs = {"do_sample": False, **kwargs}
    never = {*special, *tokens.placeholder_ids.tolist(), *kwargs.get("suppress_tokens", [])}
    kwargs["suppress_tokens"] = sorted(never)
    generated = backbone.model.generate(
        input_ids=input_ids, attention_mask=mask, cache=prefill.cache, position_ids=positions,
        eos_token_id=[eos, *tokens.begin_ids.tolist()], pad_token_id=pad, return_dict_in_generate=True,
        **kwargs,
    )
    new, cache = generated.sequences[:, input_ids.shape[1]:], generated.cache
    if cache.get_seq_length() != input_ids.shape[1] + new.shape[1] - 1:
        raise RuntimeError(
            f"generate returned a cache of {cache.get_seq_length()} tokens for a prompt of "
            f"{input_ids.shape[1]} and {new.shape[1]} new tokens (expected all but the last)"
        )
    return new, cache


def _task_step(backbone: Backbone, cache: Any, new: Tensor, mask: Tensor, positions: Tensor,
               stop_at: Tensor, task_index: Tensor) -> BackboneOutput:
    """One forward on ``generate``'s cache: the last generated token (not yet in the cache) and
    each sample's placeholder token, which attends to the prompt and to the generated tokens up to
    its task-begin token.

    Args:
        cache: the prompt and ``new[:, :-1]``.
        new: ``(B, n)`` generated tokens.
        mask: ``(B, L)`` the prompt's attention mask (left padding).
        positions: ``(..., B, L)`` the prompt's positions (:meth:`Backbone.position_ids`).
        stop_at: ``(B,)`` index in ``new`` of each sample's task-begin token.
        task_index: ``(B,)`` each sample's task.

    Returns:
        ``logits (B, 2, V)`` and ``hidden_states (B, 2, D)``; ``hidden_states[:, PLACEHOLDER_STEP]``
        are the task embeddings (meaningless for samples that called no task).
    """
    width = new.shape[1]
    step_ids = torch.stack([new[:, -1], backbone.task_tokens.placeholder_ids[task_index]], 1)
    seen = torch.arange(width, device=new.device)[None] <= stop_at[:, None]  # (B, n)
    full_mask = torch.cat([mask, seen.to(mask.dtype), torch.ones_like(mask[:, :1])], 1)
    # the last generated token sits at width - 1 after the prompt, the placeholder after the begin token
    offsets = torch.stack([torch.full_like(stop_at, width), stop_at + 2], 1)  # (B, 2)
    step_positions = positions[..., -1:] + offsets
    out = backbone.model(input_ids=step_ids, attention_mask=full_mask, position_ids=step_positions,
                         cache=cache, use_cache=True, output_hidden_states=True, return_dict=True)
    return BackboneOutput(loss=None, logits=out.logits, hidden_states=out.hidden_states[-1])

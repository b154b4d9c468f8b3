"""Tiny Qwen-VL backbones (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) built offline from configs.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the fly with Qwen's
pre-tokenizer and special tokens (``<|im_start|>``, ``<|vision_start|>``, ``<|video_pad|>``, ...),
the processors carry the family's chat templates, and the models are built from configs with
random weights. :func:`tiny_qwen_vl_model_and_processor` gives the plain Hugging Face ``(model,
processor)`` pair (what a hub folder holds, after ``save_pretrained``); :func:`tiny_qwen_vl` wraps
it as a :class:`~tpo.backbones.qwen_vl.QwenVLBackbone` with task tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from tpo.backbones.qwen_vl import QwenVLBackbone
from tpo.tokens import TaskTokens

__all__ = [
    "QWEN2_VL_CHAT_TEMPLATE",
    "QWEN3_VL_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS",
    "TINY_QWEN_VL_KINDS",
    "tiny_qwen_vl",
    "tiny_qwen_vl_model_and_processor",
    "train_qwen_tokenizer",
]

TINY_QWEN_VL_KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
"""Qwen's special tokens, in the order of their ids in the hub tokenizers (151643...)."""

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The chat template of Qwen2-VL-Instruct (and, unchanged, Qwen2.5-VL-Instruct): a default system
prompt, ``<|im_start|>role\\n ... <|im_end|>\\n`` turns."""

_QWEN3_VL_CONTENT = (
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
)
_QWEN3_VL_SYSTEM_TEXT = (
    "{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
)
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0].role == 'system' %}"
    + _QWEN3_VL_SYSTEM_TEXT
    + "{{- '\\n\\n' }}{%- endif %}"
    "{{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": "
    "<function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- else %}{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}"
    + _QWEN3_VL_SYSTEM_TEXT
    + "{{- '<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '<|im_start|>' + message.role + '\\n' }}"
    + _QWEN3_VL_CONTENT
    + "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content_item in message.content %}{%- if 'text' in content_item %}{{- content_item.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message.tool_calls %}{%- for tool_call in message.tool_calls %}"
    "{%- if (loop.first and message.content) or (not loop.first) %}{{- '\\n' }}{%- endif %}"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}"
    "{{- tool_call.arguments | tojson }}{%- endif %}{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}"
    + _QWEN3_VL_CONTENT
    + "{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""The chat template of Qwen3-VL-Instruct: no default system prompt, tool calls, the same
``<|im_start|>role\\n ... <|im_end|>\\n`` turns."""

_CHAT_TEMPLATES = {"qwen2_vl": QWEN2_VL_CHAT_TEMPLATE, "qwen2_5_vl": QWEN2_VL_CHAT_TEMPLATE,
                   "qwen3_vl": QWEN3_VL_CHAT_TEMPLATE}
_CONFIG_CLASSES = {"qwen2_vl": Qwen2VLConfig, "qwen2_5_vl": Qwen2_5_VLConfig, "qwen3_vl": Qwen3VLConfig}
_PROCESSOR_CLASSES = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor,
                      "qwen3_vl": Qwen3VLProcessor}

_DEFAULT_CORPUS = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "<|im_start|>user\nWhen does the red square appear in the video?<|im_end|>\n"
    "<|im_start|>assistant\nIt appears here.<|im_end|>\n",
    "Where is the blue circle in this frame? The blue circle is here.",
    "Track the green triangle starting from this box. Tracking it.",
    "Segment the yellow star in every frame. Here is the mask.",
    "Describe the video. A purple square moves left while an orange circle moves right, then a "
    "white triangle appears at the bottom and stays still.",
    "Find the moment when the cyan shape moves up, down, left or right, fast or slow.",
    "What colour is the large shape? How many objects are visible? Is it moving?",
    "0 1 2 3 4 5 6 7 8 9 10 . , ; : ? ! < > seconds start end from to at the of a an and",
)


def train_qwen_tokenizer(corpus: Iterable[str] | None = None, *, vocab_size: int = 512) -> Qwen2Tokenizer:
    """Train a byte-level BPE with Qwen's pre-tokenizer and special tokens, in well under a second.

    Args:
        corpus: training texts; a small built-in corpus of video instructions by default.
        vocab_size: target vocabulary size (bytes and special tokens included).

    Returns:
        A ``Qwen2Tokenizer`` (as the hub's Qwen-VL checkpoints use) with :data:`QWEN_SPECIAL_TOKENS`
        (ids 0..13), EOS ``<|im_end|>``, padding ``<|endoftext|>`` on the right and no BOS.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus or _DEFAULT_CORPUS) * 4, trainer)
    bpe = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe["merges"]]
    qwen = Qwen2Tokenizer(vocab=bpe["vocab"], merges=merges, unk_token=None, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>", padding_side="right")
    qwen.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    return qwen


def _text_config(kind: str, tokenizer: Qwen2Tokenizer, hidden_size: int, num_layers: int) -> dict[str, Any]:
    """The LLM's config: 4 heads of ``hidden_size / 4`` (16 by default), M-RoPE over its halves."""
    head_dim = hidden_size // 4
    if head_dim % 8:
        raise ValueError(f"hidden_size: expected a multiple of 32 (4 heads, M-RoPE sections), "
                         f"got {hidden_size}")
    half = head_dim // 2  # the M-RoPE sections (temporal, height, width) split the rotary half
    if kind == "qwen3_vl":
        rope = {"rope_type": "default", "mrope_section": [half - 2 * (3 * half // 8), 3 * half // 8,
                                                          3 * half // 8], "mrope_interleaved": True}
    else:
        rope = {"rope_type": "default", "mrope_section": [half // 4, half // 4, half // 2]}
    config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_parameters": {**rope, "rope_theta": 10000.0},
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
    }
    if kind == "qwen3_vl":
        config["head_dim"] = head_dim
    return config


def _vision_config(kind: str, hidden_size: int, width: int, depth: int, patch_size: int) -> dict[str, Any]:
    """The vision tower's config: ``depth`` blocks of ``width``, merger to the LLM's ``hidden_size``."""
    common = {"depth": depth, "num_heads": 4, "patch_size": patch_size, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    if kind == "qwen2_vl":
        return {**common, "embed_dim": width, "hidden_size": hidden_size, "mlp_ratio": 2}
    sized = {**common, "hidden_size": width, "intermediate_size": 2 * width, "out_hidden_size": hidden_size}
    if kind == "qwen2_5_vl":  # windows of 2 x 2 merged tokens, full attention in the last block
        return {**sized, "window_size": 4 * patch_size, "fullatt_block_indexes": [depth - 1],
                "tokens_per_second": 2}
    return {**sized, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}


def _processor(kind: str, tokenizer: Qwen2Tokenizer, image_size: int, patch_size: int,
               max_frames: int) -> Any:
    """The family's processor: frames resized to multiples of ``2 * patch_size`` of at most
    ``image_size``² pixels (Qwen3-VL: the clip's budget, ``max_frames`` such frames)."""
    factor = 2 * patch_size
    frame = {"shortest_edge": factor * factor, "longest_edge": image_size * image_size}
    patching = {"patch_size": patch_size, "merge_size": 2, "temporal_patch_size": 2}
    videos = {"do_sample_frames": False, "cap_pixels_per_frame": False, **patching}
    if kind == "qwen3_vl":  # Qwen3-VL normalises images as its video processor does, to [-1, 1]
        image_processor = Qwen2VLImageProcessor(size=frame, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                                **patching)
        clip = {"shortest_edge": 2 * factor * factor, "longest_edge": max_frames * image_size * image_size}
        video_processor = Qwen3VLVideoProcessor(size=clip, **videos)
    else:
        image_processor = Qwen2VLImageProcessor(size=frame, **patching)
        video_processor = Qwen2VLVideoProcessor(size=frame, **videos)
    cls = _PROCESSOR_CLASSES[kind]
    return cls(image_processor=image_processor, video_processor=video_processor, tokenizer=tokenizer,
               chat_template=_CHAT_TEMPLATES[kind])


def tiny_qwen_vl_model_and_processor(
    kind: str = "qwen2_5_vl",
    *,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    max_frames: int = 16,
    tie_word_embeddings: bool = False,
    tokenizer: Qwen2Tokenizer | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, Any]:
    """A tiny plain Hugging Face Qwen-VL model and its processor, built with transformers alone.

    Args:
        kind: one of :data:`TINY_QWEN_VL_KINDS`.
        image_size: the largest frame side the processors keep, pixels (larger frames are
            downscaled to about ``image_size``² pixels, sides multiples of ``2 * patch_size``).
        patch_size: vision patch size, pixels; 2 x 2 patches merge into one LLM token, 2 frames
            form a temporal patch.
        hidden_size: LLM width ``D`` (a multiple of 32: 4 heads, M-RoPE sections).
        num_layers: LLM decoder layers.
        vision_hidden_size: vision tower width.
        vision_layers: vision tower blocks.
        max_frames: Qwen3-VL's processor budgets pixels per clip: room for this many frames.
        tie_word_embeddings: share the input embeddings and the LM head (Qwen2-VL-2B, Qwen3-VL-2B).
        tokenizer: a tokenizer with :data:`QWEN_SPECIAL_TOKENS`; a tiny one is trained if None.
        seed: seeds the random initialisation.

    Returns:
        ``(model, processor)``: a ``*ForConditionalGeneration`` and the family's processor with its
        chat template; ``save_pretrained`` both into one folder for a hub-like checkpoint.
    """
    if kind not in TINY_QWEN_VL_KINDS:
        raise ValueError(f"kind: expected one of {TINY_QWEN_VL_KINDS}, got {kind!r}")
    torch.manual_seed(seed)
    tokenizer = tokenizer or train_qwen_tokenizer()
    token_ids = {f"{name}_token_id": tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image", "<|image_pad|>"), ("video", "<|video_pad|>"),
        ("vision_start", "<|vision_start|>"), ("vision_end", "<|vision_end|>"))}
    config = _CONFIG_CLASSES[kind](
        text_config=_text_config(kind, tokenizer, hidden_size, num_layers),
        vision_config=_vision_config(kind, hidden_size, vision_hidden_size, vision_layers, patch_size),
        tie_word_embeddings=tie_word_embeddings,
        **token_ids,
    )
    model = AutoModelForImageTextToText.from_config(config)
    return model, _processor(kind, tokenizer, image_size, patch_size, max_frames)


def tiny_qwen_vl(
    kind: str = "qwen2_5_vl",
    *,
    tasks: Sequence[str] | None = None,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    with_task_tokens: bool = True,
) -> QwenVLBackbone:
    """A tiny Qwen-VL backbone with task tokens attached, built from configs
    (:func:`tiny_qwen_vl_model_and_processor`; the arguments are its, plus):

    Args:
        tasks: task names for the :class:`~tpo.tokens.TaskTokens` (default: all registered).
        with_task_tokens: attach task tokens (False: a plain backbone, as a user's own copy).
    """
    model, processor = tiny_qwen_vl_model_and_processor(
        kind, image_size=image_size, patch_size=patch_size, hidden_size=hidden_size, num_layers=num_layers,
        vision_hidden_size=vision_hidden_size, vision_layers=vision_layers,
        tie_word_embeddings=tie_word_embeddings, seed=seed,
    )
    task_tokens = TaskTokens(hidden_size=hidden_size, tasks=tasks) if with_task_tokens else None
    return QwenVLBackbone(model, processor, task_tokens=task_tokens)

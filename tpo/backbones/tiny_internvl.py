"""A tiny InternVL built offline from configs, for tests and laptops.

The model is a transformers ``InternVLForConditionalGeneration`` (a small InternViT tower, pixel
shuffle, MLP projector and a Qwen2, Qwen3 or LLaMA LLM) with random weights; the tokenizer is a
byte-level BPE trained on the fly with InternVL's special tokens, and the processor carries the
chat template of the transformers-format hub checkpoints (``OpenGVLab/InternVL3-1B-hf`` ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    InternVLVisionConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from tpo.backbones.internvl import InternVLBackbone
from tpo.backbones.tiny import train_tiny_tokenizer
from tpo.tokens import TaskTokens

__all__ = [
    "INTERNVL_CHAT_TEMPLATE",
    "TINY_INTERNVL_LLMS",
    "internvl_tiny_tokenizer",
    "tiny_internvl",
    "tiny_internvl_model_and_processor",
]

INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\n' }}"
    "{% endif %}"
)
"""The chat template of InternVL's transformers-format checkpoints (ChatML, no default system turn;
an image is ``<IMG_CONTEXT>``, a video ``<video>``, each on its own line)."""

_CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_MEDIA_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

TINY_INTERNVL_LLMS = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "llama": LlamaConfig}
"""The LLM families of the InternVL checkpoints (InternVL3: Qwen2.5 / LLaMA; InternVL3.5: Qwen3)."""


def internvl_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with InternVL's special tokens: ``<|im_end|>`` is EOS (as InternVL3's
    generation stops), ``<|endoftext|>`` pads (on the right), and ``<img>``, ``</img>``,
    ``<IMG_CONTEXT>``, ``<video>`` are the media tokens ``InternVLProcessor`` reads by name."""
    trained = train_tiny_tokenizer(extra_special_tokens=[*_CHATML_TOKENS, *_MEDIA_TOKENS.values()])
    return PreTrainedTokenizerFast(
        tokenizer_object=trained.backend_tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(_MEDIA_TOKENS),
        padding_side="right",
    )


def tiny_internvl_model_and_processor(
    *,
    image_size: int = 64,
    patch_size: int = 8,
    downsample_ratio: float = 0.5,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    llm: str = "qwen2",
    tie_word_embeddings: bool = True,
    max_patches: int = 6,
    seed: int = 0,
) -> tuple[InternVLForConditionalGeneration, InternVLProcessor]:
    """A tiny ``InternVLForConditionalGeneration`` and its ``InternVLProcessor``, built with
    transformers and tokenizers alone (what a user's plain Hugging Face folder holds).

    Args:
        image_size: tile side ``S``, pixels.
        patch_size: InternViT patch side, pixels.
        downsample_ratio: pixel-shuffle ratio: ``(S / patch_size * downsample_ratio)**2`` tokens a
            tile (16 by default).
        hidden_size: LLM width ``D``.
        num_layers: LLM decoder layers.
        vision_hidden_size: InternViT width.
        vision_layers: InternViT layers.
        llm: the LLM family, a key of :data:`TINY_INTERNVL_LLMS`.
        tie_word_embeddings: share the LM head with the input embeddings (as InternVL3-1B does).
        max_patches: most tiles of an image's dynamic tiling (a thumbnail is added to several).
        seed: seeds the random initialisation.
    """
    if llm not in TINY_INTERNVL_LLMS:
        raise ValueError(f"llm: expected one of {sorted(TINY_INTERNVL_LLMS)}, got {llm!r}")
    grid = image_size / patch_size * downsample_ratio
    if image_size % patch_size or grid != int(grid):
        raise ValueError(
            f"image_size {image_size}, patch_size {patch_size}, downsample_ratio {downsample_ratio}: "
            "expected a whole number of patches per side and of pixel-shuffled tokens per side"
        )
    torch.manual_seed(seed)
    tokenizer = internvl_tiny_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (*_CHATML_TOKENS, "<IMG_CONTEXT>")}
    extra = {"head_dim": hidden_size // 4} if llm == "qwen3" else {}
    text = TINY_INTERNVL_LLMS[llm](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        tie_word_embeddings=tie_word_embeddings,
        **extra,
    )
    vision = InternVLVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=[image_size, image_size],
        patch_size=[patch_size, patch_size],
    )
    tokens_per_tile = int(grid) ** 2
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=tokens_per_tile,
        downsample_ratio=downsample_ratio,
        tie_word_embeddings=tie_word_embeddings,
    )
    pixels = {"size": {"height": image_size, "width": image_size}, "image_mean": _IMAGENET_MEAN,
              "image_std": _IMAGENET_STD}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(max_patches=max_patches, **pixels),
        video_processor=InternVLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_tile,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    return InternVLForConditionalGeneration(config), processor


def tiny_internvl(
    *,
    tasks: Sequence[str] | None = None,
    image_size: int = 64,
    patch_size: int = 8,
    downsample_ratio: float = 0.5,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    llm: str = "qwen2",
    tie_word_embeddings: bool = True,
    max_patches: int = 6,
    seed: int = 0,
    with_task_tokens: bool = True,
) -> InternVLBackbone:
    """A tiny InternVL backbone with task tokens attached (the ``tiny_internvl`` builder).

    Args:
        tasks: task names for the :class:`~tpo.tokens.TaskTokens` (default: all registered).
        with_task_tokens: attach task tokens (False: a plain backbone, as a user's own copy).
        Others as in :func:`tiny_internvl_model_and_processor`.
    """
    model, processor = tiny_internvl_model_and_processor(
        image_size=image_size,
        patch_size=patch_size,
        downsample_ratio=downsample_ratio,
        hidden_size=hidden_size,
        num_layers=num_layers,
        vision_hidden_size=vision_hidden_size,
        vision_layers=vision_layers,
        llm=llm,
        tie_word_embeddings=tie_word_embeddings,
        max_patches=max_patches,
        seed=seed,
    )
    task_tokens = TaskTokens(hidden_size=hidden_size, tasks=tasks) if with_task_tokens else None
    return InternVLBackbone(model, processor, task_tokens=task_tokens)

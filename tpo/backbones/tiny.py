"""Tiny backbones built offline from configs, for tests, the demo and laptops.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the fly with the
``tokenizers`` library, and every model is built from a config with random weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
    VideoLlavaProcessor,
    VideoLlavaVideoProcessor,
)

from tpo.backbones.llava import LlavaBackbone
from tpo.backbones.videochat import VideoChatBackbone, VideoChatProcessor
from tpo.tokens import TaskTokens

__all__ = ["train_tiny_tokenizer", "tiny_llava", "tiny_videochat", "TINY_LLAVA_KINDS"]

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<video>"]

_DEFAULT_CORPUS = (
    "USER: When does the red square appear in the video? ASSISTANT: It appears here.",
    "USER: Where is the blue circle in this frame? ASSISTANT: The blue circle is here.",
    "USER: Track the green triangle starting from this box. ASSISTANT: Tracking it.",
    "USER: Segment the yellow star in every frame. ASSISTANT: Here is the mask.",
    "USER: Describe the video. ASSISTANT: A purple square moves left while an orange circle "
    "moves right, then a white triangle appears at the bottom and stays still.",
    "Find the moment when the cyan shape moves up, down, left or right, fast or slow.",
    "What colour is the large shape? How many objects are visible? Is it moving?",
    "0 1 2 3 4 5 6 7 8 9 10 . , ; : ? ! seconds start end from to at the of a an and",
)

TINY_LLAVA_KINDS = ("llava", "llava_onevision", "llava_next_video", "video_llava")


def train_tiny_tokenizer(
    corpus: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    extra_special_tokens: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer in well under a second.

    Args:
        corpus: training texts; a small built-in corpus of video instructions by default.
        vocab_size: target vocabulary size (bytes and special tokens included).
        extra_special_tokens: more special tokens to reserve.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<pad> <s> </s> <unk>`` and the ``<image>`` / ``<video>``
        markers as special tokens, right padding.
    """
    specials = SPECIAL_TOKENS + [t for t in extra_special_tokens if t not in SPECIAL_TOKENS]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus or _DEFAULT_CORPUS) * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        padding_side="right",
    )


def _llama_config(vocab_size: int, hidden_size: int, num_layers: int, cls=LlamaConfig, **kw):
    return cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        **kw,
    )


def _local_layers(num_layers: int, window: int | None) -> dict:
    """Qwen2 config keywords: the first of ``num_layers`` layers a sliding window of ``window``."""
    if window is None:
        return {}
    types = ["sliding_attention"] + ["full_attention"] * (num_layers - 1)
    return {"use_sliding_window": True, "sliding_window": window, "layer_types": types,
            "max_window_layers": num_layers}


def tiny_llava(
    kind: str = "llava",
    *,
    tasks: Sequence[str] | None = None,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    tokenizer=None,
    seed: int = 0,
    with_task_tokens: bool = True,
    local_window: int | None = None,
) -> LlavaBackbone:
    """A tiny LLaVA-family backbone with task tokens attached, built from configs.

    Args:
        kind: one of :data:`TINY_LLAVA_KINDS`.
        tasks: task names for the :class:`~tpo.tokens.TaskTokens` (default: all registered).
        image_size: square input size of the vision tower, pixels.
        patch_size: vision patch size, pixels (``(image_size / patch_size)**2`` tokens a frame).
        hidden_size: LLM width ``D``.
        num_layers: LLM decoder layers.
        vision_hidden_size: vision tower width.
        vision_layers: vision tower layers.
        tokenizer: a tokenizer with ``<image>`` / ``<video>`` tokens; a tiny one is trained if None.
        seed: seeds the random initialisation.
        with_task_tokens: attach task tokens (False: a plain backbone, as a user's own copy).
        local_window: the first LLM layer attends to the last ``local_window`` tokens only
            (sliding-window attention; the other layers attend to everything), as Gemma 2 / 3
            alternate local and global layers. A token then reads the words just before it in a
            layer of its own, instead of one word among every video token; ``llava_onevision``
            only (its Qwen2 LLM has sliding windows).
    """
    if kind not in TINY_LLAVA_KINDS:
        raise ValueError(f"kind: expected one of {TINY_LLAVA_KINDS}, got {kind!r}")
    if local_window is not None and (kind != "llava_onevision" or local_window < 1):
        raise ValueError(f"local_window: expected a window >= 1 with kind 'llava_onevision' (a Qwen2 "
                         f"LLM), got {local_window!r} with kind {kind!r}")
    torch.manual_seed(seed)
    tokenizer = tokenizer or train_tiny_tokenizer()
    vocab = len(tokenizer)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    video_id = tokenizer.convert_tokens_to_ids("<video>")
    vision = dict(
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    square = {"height": image_size, "width": image_size}
    pinpoints = [
        [image_size, image_size],
        [image_size, 2 * image_size],
        [2 * image_size, image_size],
    ]
    tokens_per_crop = (image_size // patch_size) ** 2
    if kind == "llava":
        config = LlavaConfig(
            vision_config=CLIPVisionConfig(**vision),
            text_config=_llama_config(vocab, hidden_size, num_layers),
            image_token_index=image_id,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
        model = LlavaForConditionalGeneration(config)
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=square),
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
    elif kind == "llava_onevision":
        config = LlavaOnevisionConfig(
            vision_config=SiglipVisionConfig(**vision),
            text_config=_llama_config(vocab, hidden_size, num_layers, Qwen2Config, **_local_layers(
                num_layers, local_window)),
            image_token_index=image_id,
            video_token_index=video_id,
            image_grid_pinpoints=pinpoints,
            vision_feature_layer=-1,
        )
        model = LlavaOnevisionForConditionalGeneration(config)
        processor = LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=pinpoints),
            video_processor=LlavaOnevisionVideoProcessor(size=square),
            tokenizer=tokenizer,
            num_image_tokens=tokens_per_crop,
            vision_feature_select_strategy="full",
        )
    elif kind == "llava_next_video":
        config = LlavaNextVideoConfig(
            vision_config=CLIPVisionConfig(**vision),
            text_config=_llama_config(vocab, hidden_size, num_layers),
            image_token_index=image_id,
            video_token_index=video_id,
            image_grid_pinpoints=pinpoints,
            vision_feature_layer=-1,
            spatial_pool_stride=2,
        )
        model = LlavaNextVideoForConditionalGeneration(config)
        processor = LlavaNextVideoProcessor(
            image_processor=LlavaNextImageProcessor(
                size={"shortest_edge": image_size}, crop_size=square, image_grid_pinpoints=pinpoints
            ),
            video_processor=LlavaNextVideoVideoProcessor(
                size={"shortest_edge": image_size}, crop_size=square
            ),
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
    else:
        config = VideoLlavaConfig(
            vision_config=CLIPVisionConfig(**vision),
            text_config=_llama_config(vocab, hidden_size, num_layers),
            image_token_index=image_id,
            video_token_index=video_id,
            vision_feature_layer=-1,
        )
        model = VideoLlavaForConditionalGeneration(config)
        processor = VideoLlavaProcessor(
            image_processor=VideoLlavaImageProcessor(size={"shortest_edge": image_size}, crop_size=square),
            video_processor=VideoLlavaVideoProcessor(size={"shortest_edge": image_size}, crop_size=square),
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
    task_tokens = TaskTokens(hidden_size=hidden_size, tasks=tasks) if with_task_tokens else None
    return LlavaBackbone(model, processor, task_tokens=task_tokens)


def tiny_videochat(
    vision: str = "timm",
    *,
    tasks: Sequence[str] | None = None,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    num_query_tokens: int = 8,
    max_frames: int = 16,
    tokenizer=None,
    seed: int = 0,
    with_task_tokens: bool = True,
) -> VideoChatBackbone:
    """A tiny VideoChat-style backbone (vision tower + Q-Former + LLaMA) with task tokens.

    Args:
        vision: ``"timm"`` for a timm ViT, ``"clip"`` for a transformers ``CLIPVisionModel``.
        num_query_tokens: learnable Q-Former queries per clip (visual tokens the LLM reads).
        max_frames: the longest clip the temporal embedding covers.
        Others as in :func:`tiny_llava`.
    """
    torch.manual_seed(seed)
    tokenizer = tokenizer or train_tiny_tokenizer()
    if vision == "timm":
        vision_spec = {
            "type": "timm",
            "name": "vit_tiny_patch16_224",
            "kwargs": {
                "img_size": image_size,
                "patch_size": patch_size,
                "embed_dim": vision_hidden_size,
                "depth": 2,
                "num_heads": 4,
            },
        }
    elif vision == "clip":
        config = CLIPVisionConfig(
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
        )
        vision_spec = {"type": "transformers", "config": config.to_dict()}
    else:
        raise ValueError(f"vision: expected 'timm' or 'clip', got {vision!r}")
    qformer = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "cross_attention_frequency": 1,
        "encoder_hidden_size": vision_hidden_size,
    }
    llm = LlamaForCausalLM(_llama_config(len(tokenizer), hidden_size, num_layers))
    processor = VideoChatProcessor(
        tokenizer=tokenizer, image_size=image_size, num_query_tokens=num_query_tokens
    )
    backbone = VideoChatBackbone(
        vision=vision_spec,
        qformer=qformer,
        llm=llm,
        processor=processor,
        num_query_tokens=num_query_tokens,
        max_frames=max_frames,
    )
    if with_task_tokens:
        backbone.attach_task_tokens(TaskTokens(hidden_size=hidden_size, tasks=tasks))
    return backbone

"""Hugging Face's Qwen-VL family as a TPO backbone.

Supported model types (through ``AutoModelForImageTextToText``): ``qwen2_vl``
(``Qwen2VLForConditionalGeneration``), ``qwen2_5_vl`` (``Qwen2_5_VLForConditionalGeneration``) and
``qwen3_vl`` (``Qwen3VLForConditionalGeneration``).

What the family does and how the backbone follows it:

- The processor flattens each image / video into patches of ``temporal_patch_size`` frames
  (2) of ``patch_size`` pixels, with the grid ``(t, h, w)`` in ``image_grid_thw`` /
  ``video_grid_thw`` (a clip of odd length is padded with its last frame; an image is one
  temporal patch holding two copies of itself). The vision tower's merger joins
  ``spatial_merge_size``² neighbouring patches, so a step of ``t`` reads
  ``(h / merge) * (w / merge)`` tokens, in row-major order of the merged grid.
- The backbone encodes the media once with the model's own ``get_image_features`` /
  ``get_video_features`` and hands the encoder outputs to the model through its
  ``mm_encoder_outputs`` argument (transformers 5.24 takes precomputed features there, Qwen3-VL's
  DeepStack features included), so nothing is encoded twice. The heads get the merged tokens in
  the LLM width: ``visual (B, T', N, D)`` with ``T' = ceil(T / temporal_patch_size)`` steps,
  ``N = h' * w'`` on the merged grid ``visual_grid = (h', w')`` and ``temporal_stride =
  temporal_patch_size``.
- M-RoPE positions ``(3, B, L)`` come from the model's own ``get_rope_index`` (with the grids,
  Qwen2.5-VL's ``second_per_grid_ts`` and the token types of the placeholders) and are passed to the
  model explicitly (:meth:`QwenVLBackbone.position_ids`), so no forward depends on the
  ``rope_deltas`` the model caches between calls. Qwen3-VL's frames are separated by timestamp
  texts (``<0.5 seconds>``) that its processor writes; its ``get_rope_index`` numbers each frame
  on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BatchFeature

from tpo.backbones.base import EncodedVisual, group_frames, register_backbone
from tpo.backbones.hf import HFBackbone, WrappedProcessor
from tpo.tokens import TaskTokens

__all__ = ["QwenVLBackbone", "QwenVLProcessor", "SUPPORTED_MODEL_TYPES"]

SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
_FRAME_WRAPPING_TYPES = ("qwen3_vl",)  # the processor wraps each frame in vision start / end itself
_TEXT, _IMAGE, _VIDEO = 0, 1, 2  # the token types get_rope_index reads


class QwenVLProcessor(WrappedProcessor):
    """A Hugging Face Qwen-VL processor with the markers TPO's collator writes.

    Texts carry :attr:`image_token` once per image and :attr:`video_token` once per video, what
    the family's chat template renders for one medium: ``<|vision_start|><|image_pad|><|vision_end|>``
    and ``<|vision_start|><|video_pad|><|vision_end|>``. Qwen3-VL's processor writes the vision
    start / end tokens around every frame itself (after the frame's timestamp), so its video
    marker is the bare ``<|video_pad|>``. The wrapped processor expands the pad token to the
    medium's number of merged tokens.

    Videos are the frames the caller sampled: they go in with ``do_sample_frames=False``.

    Args:
        processor: the Hugging Face processor (``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor``,
            ``Qwen3VLProcessor``).
        model_type: the model's ``model_type`` (one of :data:`SUPPORTED_MODEL_TYPES`).
    """

    def __init__(self, processor: Any, *, model_type: str) -> None:
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type: expected one of {SUPPORTED_MODEL_TYPES}, got {model_type!r}")
        missing = [a for a in ("image_token", "video_token", "image_processor", "video_processor")
                   if getattr(processor, a, None) is None]
        if missing:
            raise ValueError(
                f"processor: {type(processor).__name__} lacks {missing}; expected a Qwen-VL processor "
                "(Qwen2VLProcessor, Qwen2_5_VLProcessor, Qwen3VLProcessor)"
            )
        super().__init__(processor)
        self.model_type = model_type
        self.image_token: str = VISION_START + processor.image_token + VISION_END
        wraps_frames = model_type in _FRAME_WRAPPING_TYPES
        self.video_token: str = processor.video_token if wraps_frames else (
            VISION_START + processor.video_token + VISION_END
        )

    def __call__(
        self,
        text: list[str] | str,
        images: list | None = None,
        videos: list | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenise ``text`` and encode ``images`` (``(H, W, 3)`` uint8 each) and ``videos``
        (``(T, H, W, 3)`` uint8 each); ``kwargs`` go to the wrapped processor (e.g.
        ``video_metadata`` with each clip's ``fps`` and ``frames_indices``, which set Qwen2.5-VL's
        time steps and Qwen3-VL's timestamp texts; without it the processor assumes 24 fps).

        Returns:
            the processor's batch (``input_ids``, ``attention_mask``, ``mm_token_type_ids``,
            ``pixel_values`` + ``image_grid_thw``, ``pixel_values_videos`` + ``video_grid_thw``...)
            plus ``video_num_frames (num_videos,)`` long, the frames of each clip before the
            temporal padding.
        """
        texts = [text] if isinstance(text, str) else list(text)
        kwargs.setdefault("return_tensors", "pt")
        kwargs.setdefault("padding", True)
        if videos:
            kwargs.setdefault("do_sample_frames", False)
        out = self.processor(text=texts, images=images or None, videos=videos or None, **kwargs)
        if videos:
            out["video_num_frames"] = torch.tensor([len(v) for v in videos], dtype=torch.long)
        return out


@dataclass
class _Media:
    """One image or video: merged tokens ``(t, N, D)``, its ``num_frames`` normalised frames
    ``(num_frames, 3, H, W)`` (without the temporal padding; an image is one) and its merged grid
    ``(h', w')``."""

    tokens: Tensor
    frames: Tensor
    num_frames: int
    grid: tuple[int, int]


@register_backbone(SUPPORTED_MODEL_TYPES)
class QwenVLBackbone(HFBackbone):
    """A Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) with TPO task tokens.

    Args:
        model: a ``*ForConditionalGeneration`` of one of :data:`SUPPORTED_MODEL_TYPES`.
        processor: its Hugging Face processor, or a :class:`QwenVLProcessor`.
        task_tokens: task tokens to attach (added to the tokenizer and embeddings if the tokenizer
            lacks them); ``None`` for none.

    ``forward(batch)`` reads ``input_ids (B, L)``, ``attention_mask (B, L)``, optional
    ``labels (B, L)`` (-100 where ignored), ``pixel_values (P, C * 2 * p * p)`` + ``image_grid_thw
    (num_images, 3)``, ``pixel_values_videos`` + ``video_grid_thw (num_videos, 3)`` (+ Qwen2.5-VL's
    ``second_per_grid_ts (num_videos,)``) and ``video_num_frames (num_videos,)`` as
    :class:`QwenVLProcessor` returns them, and ``prompt_boxes (K, 4)`` for ``<track_box>`` tokens.

    Its visual output is the merged tokens the LLM reads, in the LLM width (``visual_dim = D``):

    - a video gives ``T' = ceil(T / temporal_patch_size)`` steps, ``temporal_stride =
      temporal_patch_size`` and ``num_frames = T`` (``video_num_frames``; without it ``T' * stride``);
    - an image-only batch gives one step per image with ``temporal_stride = 1`` and
      ``num_frames = 1``;
    - a batch mixing images and videos keeps the videos' stride: an image is one step standing for
      one frame (``num_frames = 1``; the tower read it as a still temporal patch), so
      :meth:`~tpo.backbones.BackboneOutput.per_frame` gives it one frame. Its merged grid must
      equal the videos' (same frame size), as it must across all samples of a batch.

    ``frames (B, F, 3, H, W)`` are the normalised frames recovered from the patches, one per
    sampled frame, aligned with :meth:`~tpo.backbones.BackboneOutput.per_frame` (``F =
    max(num_frames)``; zeros where padded).
    """

    supported_model_types = SUPPORTED_MODEL_TYPES

    def __init__(self, model: nn.Module, processor: Any, *, task_tokens: TaskTokens | None = None) -> None:
        super().__init__(model, processor, task_tokens=task_tokens)
        vision = model.config.vision_config
        self.patch_size: int = vision.patch_size
        self.spatial_merge_size: int = vision.spatial_merge_size
        self.temporal_patch_size: int = vision.temporal_patch_size

    def wrap_processor(self, processor: Any) -> QwenVLProcessor:
        if isinstance(processor, QwenVLProcessor):
            return processor
        return QwenVLProcessor(processor, model_type=self.model_type)

    def media_token_ids(self) -> list[int]:
        """The image and video pads and the ``<|vision_start|>`` / ``<|vision_end|>`` around them."""
        config = self.model.config
        return [self.image_token_id, self.video_token_id, config.vision_start_token_id,
                config.vision_end_token_id]

    # ------------------------------------------------------------------ positions
    def token_types(self, input_ids: Tensor) -> Tensor:
        """``(B, L)`` int: 0 text, 1 image, 2 video placeholder (the ``mm_token_type_ids`` the
        processor writes)."""
        types = torch.zeros_like(input_ids, dtype=torch.int)
        types[input_ids == self.image_token_id] = _IMAGE
        types[input_ids == self.video_token_id] = _VIDEO
        return types

    def position_ids(self, batch: dict) -> Tensor:
        """The M-RoPE positions of the batch's tokens, ``(3, B, L)`` long (temporal, height,
        width), from the model's ``get_rope_index``: text tokens count up from each sample's first
        attended token (left padding is skipped; padding positions are 0), visual tokens lie on
        their ``(t, h', w')`` grid. A text-only batch has three equal rows. Tokens that follow
        the batch (generation) continue at ``position_ids[..., -1:] + 1`` on all three rows
        (the prompt ends in text)."""
        input_ids = self.require(batch, "input_ids")
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        image_grid, video_grid = batch.get("image_grid_thw"), batch.get("video_grid_thw")
        if image_grid is None and video_grid is None:
            text = (mask.long().cumsum(-1) - 1).clamp(min=0)
            return text[None].expand(3, -1, -1)
        positions, _ = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=self.token_types(input_ids),
            image_grid_thw=image_grid,
            video_grid_thw=video_grid,
            second_per_grid_ts=batch.get("second_per_grid_ts"),
            attention_mask=mask,
        )
        return positions

    def lm_forward(self, batch: dict, **model_kwargs) -> Any:
        """:meth:`Backbone.lm_forward` with the batch's M-RoPE :meth:`position_ids` unless
        ``position_ids`` are given (``(3, B, L)``; ``(B, L)`` text positions only for batches
        without visual tokens)."""
        positions = model_kwargs.pop("position_ids", None)
        if positions is None:
            positions = self.position_ids(batch)
        elif positions.ndim == 2 and bool(self.token_types(self.require(batch, "input_ids")).any()):
            raise ValueError(
                f"position_ids: {self.model_type} needs M-RoPE positions (3, B, L) for a batch with visual "
                f"tokens (QwenVLBackbone.position_ids), got text positions {tuple(positions.shape)}"
            )
        return super().lm_forward(batch, position_ids=positions, **model_kwargs)

    # ------------------------------------------------------------------ visual features
    def _patches_to_frames(self, patches: Tensor, grid: Tensor) -> Tensor:
        """Undo the processor's patch layout: ``(t * h * w, C * tp * p * p)`` -> ``(t * tp, C, H, W)``
        normalised frames (``H = h * p``)."""
        t, h, w = grid.tolist()
        m, tp, p = self.spatial_merge_size, self.temporal_patch_size, self.patch_size
        x = patches.reshape(t, h // m, w // m, m, m, -1, tp, p, p)
        x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8)  # t, tp, C, h/m, m, p, w/m, m, p
        return x.reshape(t * tp, x.shape[2], h * p, w * p)

    def _encode(self, kind: str, batch: dict) -> tuple[Any, list[_Media]]:
        """Encode the batch's images (``kind="image"``) or videos (``"video"``) once.

        Returns:
            the model's encoder output and one :class:`_Media` per image / video, in order.
        """
        model = self.model.model
        if kind == "image":
            pixels, grid = batch["pixel_values"], self.require(batch, "image_grid_thw")
            encoded = model.get_image_features(pixels, grid, return_dict=True)
        else:
            pixels, grid = batch["pixel_values_videos"], self.require(batch, "video_grid_thw")
            encoded = model.get_video_features(pixels, grid, return_dict=True)
        patches = pixels.split(grid.prod(-1).tolist())
        lengths = self._clip_lengths(batch, grid) if kind == "video" else [1] * len(grid)
        media = []
        items = zip(encoded.pooler_output, patches, grid, lengths, strict=True)
        for tokens, clip_patches, thw, length in items:
            merged = (int(thw[1]) // self.spatial_merge_size, int(thw[2]) // self.spatial_merge_size)
            frames = self._patches_to_frames(clip_patches, thw)[:length]
            media.append(_Media(tokens.unflatten(0, (int(thw[0]), -1)), frames, length, merged))
        return encoded, media

    def _clip_lengths(self, batch: dict, grid: Tensor) -> list[int]:
        """Frames of each video: ``video_num_frames``, checked against the temporal patches of its
        grid (``t * stride - stride < T <= t * stride``); ``t * stride`` without it."""
        padded = (grid[:, 0] * self.temporal_patch_size).tolist()
        lengths = batch.get("video_num_frames")
        if lengths is None:
            return padded
        lengths = [int(n) for n in lengths]
        bad = [(n, p) for n, p in zip(lengths, padded, strict=False)
               if not p - self.temporal_patch_size < n <= p]
        if len(lengths) != len(padded) or bad:
            raise ValueError(
                f"video_num_frames: {lengths} frames for videos of {padded} frames in temporal patches "
                f"of {self.temporal_patch_size} (video_grid_thw); expected one count per video that "
                "fills its patches"
            )
        return lengths

    @staticmethod
    def _media_per_sample(input_ids: Tensor, token_id: int, media: list[_Media], name: str) -> list[int]:
        """How many of ``media`` (in order) each sample's ``token_id`` placeholders hold."""
        sizes = [m.tokens.shape[0] * m.tokens.shape[1] for m in media]
        placeholders = (input_ids == token_id).sum(1).tolist()
        counts, taken = [], 0
        for left in placeholders:
            start = taken
            while left > 0 and taken < len(sizes):
                left -= sizes[taken]
                taken += 1
            if left != 0:
                break
            counts.append(taken - start)
        if len(counts) != len(placeholders) or taken != len(sizes):
            raise ValueError(
                f"input_ids: {placeholders} {name} placeholder tokens per sample do not match the "
                f"{len(sizes)} {name}s of the batch ({sizes} merged tokens each)"
            )
        return counts

    def encode_visual(self, batch: dict) -> EncodedVisual:
        """Encode the batch's images and videos once; see the class docstring for the fields."""
        input_ids = self.require(batch, "input_ids")
        per_sample: list[list[_Media]] = [[] for _ in range(input_ids.shape[0])]
        mm = {}
        for kind, key, token_id in (("image", "pixel_values", self.image_token_id),
                                    ("video", "pixel_values_videos", self.video_token_id)):
            if batch.get(key) is None:
                continue
            mm[kind], media = self._encode(kind, batch)
            items = iter(media)
            for b, count in enumerate(self._media_per_sample(input_ids, token_id, media, kind)):
                per_sample[b].extend(next(items) for _ in range(count))
        if not mm:
            return EncodedVisual()
        stride = self.temporal_patch_size if "video" in mm else 1
        return EncodedVisual(mm, _visual_fields(per_sample, stride))


def _visual_fields(per_sample: list[list[_Media]], stride: int) -> dict[str, Any]:
    """The :class:`~tpo.backbones.BackboneOutput` fields of each sample's media (in order)."""
    grids = {m.grid for media in per_sample for m in media}
    if len(grids) > 1:
        raise ValueError(
            f"batch: the media give different merged grids {sorted(grids)} (frame sizes differ); "
            "resize them to one size or batch them separately"
        )
    visual, visual_mask = _group([[m.tokens for m in media] for media in per_sample], "visual tokens")
    frames, _ = _group([[m.frames for m in media] for media in per_sample], "frames")
    num_frames = [sum(m.num_frames for m in media) for media in per_sample]
    return {
        "visual": visual,
        "visual_mask": visual_mask,
        "visual_grid": grids.pop(),
        "frames": frames,
        "temporal_stride": stride,
        "num_frames": torch.tensor(num_frames, dtype=torch.long, device=visual.device),
    }


def _group(per_sample: list[list[Tensor]], name: str) -> tuple[Tensor, Tensor]:
    """Per-sample lists of ``(n, ...)`` tensors -> ``(B, T, ...)`` zero-padded and ``(B, T)`` mask."""
    counts = [sum(t.shape[0] for t in items) for items in per_sample]
    return group_frames(torch.cat([t for items in per_sample for t in items]), counts, name=name)

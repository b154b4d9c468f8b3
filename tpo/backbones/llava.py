"""Hugging Face's LLaVA family as a TPO backbone.

Supported model types (through ``AutoModelForImageTextToText``): ``llava``
(``LlavaForConditionalGeneration``; a video is fed as its frames, one image each),
``llava_onevision``, ``llava_next_video`` and ``video_llava``.

The backbone computes the visual features once with the model's own ``get_image_features`` /
``get_video_features``, keeps them as per-frame tokens for the heads, and hands them to the
model through its ``mm_encoder_outputs`` argument, so nothing is encoded twice.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BatchFeature

from tpo.backbones.base import EncodedVisual, group_frames, register_backbone
from tpo.backbones.hf import HFBackbone, WrappedProcessor
from tpo.tokens import TaskTokens

__all__ = ["LlavaBackbone", "LlavaFamilyProcessor", "SUPPORTED_MODEL_TYPES"]

SUPPORTED_MODEL_TYPES = ("llava", "llava_onevision", "llava_next_video", "video_llava")
_VIDEO_MODEL_TYPES = ("llava_onevision", "llava_next_video", "video_llava")


class LlavaFamilyProcessor(WrappedProcessor):
    """A Hugging Face LLaVA processor that also takes videos for image-only models.

    Texts carry :attr:`image_token` once per image and :attr:`video_token` once per video; the
    wrapped processor expands them to the model's number of visual tokens. With
    ``frames_as_images`` (plain LLaVA) a video marker becomes one image marker per frame and the
    frames go in as images.

    Args:
        processor: the Hugging Face processor (``LlavaProcessor``, ``LlavaOnevisionProcessor``...).
        frames_as_images: feed videos as their frames, one image each.
    """

    def __init__(self, processor: Any, *, frames_as_images: bool) -> None:
        super().__init__(processor)
        self.frames_as_images = frames_as_images
        self.image_token: str = processor.image_token
        self.video_token: str = "<video>" if frames_as_images else processor.video_token

    def __call__(
        self,
        text: list[str] | str,
        images: list | None = None,
        videos: list | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenise ``text`` and encode ``images`` / ``videos`` (``(T, H, W, 3)`` uint8 each)."""
        texts = [text] if isinstance(text, str) else list(text)
        if self.frames_as_images and videos:
            texts, images = self._videos_to_frames(texts, list(images or []), list(videos))
            videos = None
        kwargs.setdefault("return_tensors", "pt")
        kwargs.setdefault("padding", True)
        if images and "video_llava" in type(self.processor).__name__.lower():
            kwargs.setdefault("return_legacy_image_output", False)
        return self.processor(text=texts, images=images or None, videos=videos or None, **kwargs)

    def _videos_to_frames(self, texts: list[str], images: list, videos: list) -> tuple[list, list]:
        pattern = f"({re.escape(self.image_token)}|{re.escape(self.video_token)})"
        image_iter, video_iter = iter(images), iter(videos)
        out_texts, out_images = [], []
        for text in texts:
            parts = []
            for piece in re.split(pattern, text):
                if piece == self.image_token:
                    out_images.append(next(image_iter))
                    parts.append(piece)
                elif piece == self.video_token:
                    frames = list(next(video_iter))
                    out_images.extend(frames)
                    parts.append(self.image_token * len(frames))
                else:
                    parts.append(piece)
            out_texts.append("".join(parts))
        return out_texts, out_images


@register_backbone(SUPPORTED_MODEL_TYPES)
class LlavaBackbone(HFBackbone):
    """A LLaVA-family model with TPO task tokens.

    Args:
        model: a ``*ForConditionalGeneration`` of one of :data:`SUPPORTED_MODEL_TYPES`.
        processor: its Hugging Face processor, or a :class:`LlavaFamilyProcessor`.
        task_tokens: task tokens to attach (see :class:`~tpo.backbones.hf.HFBackbone`).

    ``forward(batch)`` reads ``input_ids (B, L)``, ``attention_mask (B, L)``, optional
    ``labels (B, L)`` (-100 where ignored), ``pixel_values`` (+ ``image_sizes``,
    ``batch_num_images``) and ``pixel_values_videos (B, T, 3, H, W)`` as the processor returns them,
    and ``prompt_boxes (K, 4)`` for ``<track_box>`` tokens. Its ``visual`` output is the per-frame
    visual tokens after the multimodal projector, in the LLM width (``visual_dim = D``), on the
    vision tower's full patch grid: an image is one frame at base resolution (any-resolution crops
    are left to the LLM); a video's frames are not pooled even where the LLM reads them pooled
    (LLaVA-OneVision, LLaVA-NeXT-Video), so the heads see every patch. A batch may mix image and video
    samples only where both give the same number of tokens per frame.
    """

    supported_model_types = SUPPORTED_MODEL_TYPES

    def __init__(self, model: nn.Module, processor: Any, *, task_tokens: TaskTokens | None = None) -> None:
        super().__init__(model, processor, task_tokens=task_tokens)
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        self._image_grid = (side, side)

    def wrap_processor(self, processor: Any) -> LlavaFamilyProcessor:
        if isinstance(processor, LlavaFamilyProcessor):
            return processor
        return LlavaFamilyProcessor(processor, frames_as_images=self.model_type == "llava")

    # ------------------------------------------------------------------ visual features
    def _image_features(self, batch: dict) -> tuple[Any, Tensor, int]:
        """Encode images.

        Returns:
            the model's encoder output, ``(num_images, N, D)`` base-grid tokens and the number of
            text placeholders per image (meaningful for fixed-size images).
        """
        kwargs = {"pixel_values": batch["pixel_values"]}
        if self.model_type in ("llava_onevision", "llava_next_video"):
            kwargs["image_sizes"] = batch.get("image_sizes")
        if self.model_type == "llava_onevision" and batch.get("batch_num_images") is not None:
            kwargs["batch_num_images"] = batch["batch_num_images"]
        encoded = self.model.model.get_image_features(**kwargs, return_dict=True)
        pooled = encoded.pooler_output
        n_base = self._image_grid[0] * self._image_grid[1]
        if isinstance(pooled, Tensor):
            tokens = pooled
        else:
            tokens = torch.stack([p[:n_base] if p.shape[0] != n_base + 1 else p for p in pooled])
        return encoded, self._drop_cls(tokens), tokens.shape[1]

    def _video_features(self, batch: dict) -> tuple[Any, Tensor]:
        """Encode videos -> (model encoder output, ``(B_v, T, n, D)`` per-frame tokens)."""
        videos = batch["pixel_values_videos"]
        num_videos, num_frames = videos.shape[:2]
        encoded = self.model.model.get_video_features(pixel_values_videos=videos, return_dict=True)
        if self.model_type == "video_llava":  # no pooling: the LLM's tokens are the full grid
            pooled = encoded.pooler_output
            tokens = self._drop_cls(pooled.reshape(num_videos * num_frames, -1, pooled.shape[-1]))
        else:  # the LLM reads pooled frames; the heads get the projected, unpooled grid
            tokens = self.model.model.multi_modal_projector(self._selected_vision_features(encoded))
        return encoded, tokens.unflatten(0, (num_videos, num_frames))

    def _selected_vision_features(self, encoded: Any) -> Tensor:
        """The vision tower's features at ``vision_feature_layer`` (CLS dropped under the
        ``default`` strategy), as the model feeds them to its projector: ``(F, N, D_vision)``."""
        config = self.model.config
        layer = config.vision_feature_layer
        hidden = encoded.hidden_states
        selected = hidden[layer] if isinstance(layer, int) else torch.cat([hidden[i] for i in layer], -1)
        if getattr(config, "vision_feature_select_strategy", "full") == "default":
            selected = selected[:, 1:]
        return selected

    @staticmethod
    def _drop_cls(tokens: Tensor) -> Tensor:
        """``(F, N, D)``: drop a leading CLS token when ``N - 1`` is a square."""
        n = tokens.shape[1]
        if math.isqrt(n) ** 2 != n and math.isqrt(n - 1) ** 2 == n - 1:
            return tokens[:, 1:]
        return tokens

    def _images_per_sample(self, input_ids: Tensor, num_images: int, tokens_per_image: int) -> list[int]:
        is_image = input_ids == self.image_token_id
        if self.model_type in ("llava", "video_llava"):
            counts = (is_image.sum(1) // tokens_per_image).tolist()
        else:  # any-resolution images: one contiguous run of image tokens per image
            starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:, :-1]
            counts = starts.sum(1).tolist()
        if sum(counts) != num_images:
            raise ValueError(
                f"input_ids: {sum(counts)} image placeholders ({counts} per sample) but "
                f"pixel_values holds {num_images} images"
            )
        return counts

    def encode_visual(self, batch: dict) -> EncodedVisual:
        """Encode the batch's images and videos once.

        Returns:
            ``mm_encoder_outputs`` for the model and the fields ``visual (B, T, N, D)``,
            ``visual_mask (B, T)``, ``visual_grid`` and the normalised ``frames (B, T, 3, H, W)`` the
            vision tower read (base crop of an image; ``None`` where image and video sizes differ);
            nothing for a text-only batch.
        """
        input_ids = self.require(batch, "input_ids")
        batch_size = input_ids.shape[0]
        mm = {}
        tokens: list[list[Tensor]] = [[] for _ in range(batch_size)]
        pixels: list[list[Tensor]] = [[] for _ in range(batch_size)]
        if batch.get("pixel_values") is not None:
            mm["image"], image_tokens, per_image = self._image_features(batch)
            counts = self._images_per_sample(input_ids, image_tokens.shape[0], per_image)
            values = batch["pixel_values"]
            base = values[:, 0] if values.ndim == 5 else values
            for b, (t, p) in enumerate(zip(image_tokens.split(counts), base.split(counts), strict=True)):
                tokens[b].append(t)
                pixels[b].append(p)
        if batch.get("pixel_values_videos") is not None:
            mm["video"], video_tokens = self._video_features(batch)
            has_video = (input_ids == self.video_token_id).any(1).nonzero().flatten().tolist()
            if len(has_video) != video_tokens.shape[0]:
                raise ValueError(
                    f"input_ids: {len(has_video)} samples have video tokens but "
                    f"pixel_values_videos holds {video_tokens.shape[0]} videos"
                )
            for b, t, p in zip(has_video, video_tokens, batch["pixel_values_videos"], strict=True):
                tokens[b].append(t)
                pixels[b].append(p)
        if not mm:
            return EncodedVisual()
        visual, mask = _stack_per_sample(tokens, "visual tokens", strict=True)
        frames, _ = _stack_per_sample(pixels, "frames", strict=False)
        fields = {"visual": visual, "visual_mask": mask, "visual_grid": self.grid_size(visual.shape[2]),
                  "frames": frames}
        return EncodedVisual(mm, fields)


def _stack_per_sample(items: list[list[Tensor]], name: str, *, strict: bool) -> tuple[Tensor | None, Tensor]:
    """Per-sample lists of ``(F_i, ...)`` tensors -> ``(B, T, ...)`` padded and ``(B, T)`` mask.

    Samples give different per-frame shapes when images and videos mix: an error with ``strict``,
    else ``None``.
    """
    per_sample = [torch.cat(f) if f else None for f in items]
    shapes = {f.shape[1:] for f in per_sample if f is not None}
    if len(shapes) > 1:
        if not strict:
            return None, None
        raise ValueError(
            f"batch: samples give different {name} shapes {sorted(shapes)} per frame "
            "(images and videos mixed); batch them separately"
        )
    (shape,) = shapes
    empty = next(f for f in per_sample if f is not None).new_zeros(0, *shape)
    per_sample = [f if f is not None else empty for f in per_sample]
    return group_frames(torch.cat(per_sample), [f.shape[0] for f in per_sample], name=name)

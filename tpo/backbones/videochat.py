"""A VideoChat2-style backbone: vision tower + Q-Former connector + any causal LM.

Each clip's frames go through the vision tower; a learnable temporal embedding is added; a
``Blip2QFormerModel`` with learnable queries reads all the clip's tokens and its outputs, projected
to the LLM width, take the place of the clip's ``<video>`` tokens in the text.
"""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    BatchFeature,
    Blip2QFormerConfig,
    Blip2QFormerModel,
)

from tpo.backbones.base import Backbone, BackboneOutput, group_frames, register_backbone
from tpo.tokens import TaskTokens

__all__ = ["VideoChatBackbone", "VideoChatProcessor", "VisionTower"]

PROCESSOR_CONFIG = "videochat_processor.json"
MODEL_CONFIG = "videochat.json"
CONNECTOR_WEIGHTS = "vision_connector.safetensors"
MODEL_TYPE = "videochat"


class VideoChatProcessor:
    """Text and frames for :class:`VideoChatBackbone`.

    Each ``<image>`` / ``<video>`` marker in a text becomes ``num_query_tokens`` video tokens; an
    image is a one-frame clip. Frames are resized to ``image_size`` and normalised.

    Args:
        tokenizer: a Hugging Face tokenizer holding the ``<video>`` token.
        image_size: side of the square frames the vision tower reads, pixels.
        num_query_tokens: Q-Former queries per clip.
        mean, std: per-channel normalisation of RGB in [0, 1].
    """

    image_token = "<image>"
    video_token = "<video>"

    def __init__(
        self,
        *,
        tokenizer,
        image_size: int,
        num_query_tokens: int,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
    ) -> None:
        if self.video_token not in tokenizer.get_vocab():
            raise ValueError(
                f"tokenizer: lacks the {self.video_token!r} token the processor expands clips into"
            )
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_query_tokens = num_query_tokens
        self.mean = tuple(mean)
        self.std = tuple(std)

    def _frames(self, clip: Any, name: str) -> Tensor:
        """``(T, H, W, 3)`` uint8 (array, tensor or list of PIL images) -> ``(T, 3, S, S)`` float."""
        if isinstance(clip, (list, tuple)):
            clip = np.stack([np.asarray(frame) for frame in clip])
        frames = torch.as_tensor(np.asarray(clip) if not isinstance(clip, Tensor) else clip)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{name}: expected (T, H, W, 3) RGB frames, got shape {tuple(frames.shape)}")
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(
            x,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(
        self,
        text: list[str] | str,
        images: list | None = None,
        videos: list | None = None,
        return_tensors: str = "pt",
        padding: bool | str = True,
        **kwargs,
    ) -> BatchFeature:
        """Tokenise ``text`` and stack the clips.

        Returns:
            ``input_ids (B, L)``, ``attention_mask (B, L)`` and, when there are clips,
            ``pixel_values_videos (C, T, 3, S, S)`` with ``video_frame_mask (C, T)`` bool — clips in
            the order their markers appear in the texts, shorter clips zero-padded.
        """
        texts = [text] if isinstance(text, str) else list(text)
        image_iter, video_iter = iter(images or []), iter(videos or [])
        pattern = f"({re.escape(self.image_token)}|{re.escape(self.video_token)})"
        clips, expanded = [], []
        run = self.video_token * self.num_query_tokens
        for i, sample in enumerate(texts):
            parts = []
            for piece in re.split(pattern, sample):
                if piece in (self.image_token, self.video_token):
                    source = image_iter if piece == self.image_token else video_iter
                    clip = next(source, None)
                    if clip is None:
                        raise ValueError(f"text[{i}]: more {piece} markers than {piece[1:-1]}s given")
                    clips.append(self._frames(clip, f"{piece[1:-1]} of text[{i}]"))
                    parts.append(run)
                else:
                    parts.append(piece)
            expanded.append("".join(parts))
        if next(image_iter, None) is not None or next(video_iter, None) is not None:
            raise ValueError("images/videos: more given than markers in the texts")
        out = dict(self.tokenizer(expanded, padding=padding, return_tensors=return_tensors, **kwargs))
        if clips:
            lengths = [c.shape[0] for c in clips]
            stacked = torch.zeros(len(clips), max(lengths), *clips[0].shape[1:])
            for c, clip in enumerate(clips):
                stacked[c, : clip.shape[0]] = clip
            out["pixel_values_videos"] = stacked
            out["video_frame_mask"] = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
        return BatchFeature(out)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tokenizer.save_pretrained(str(directory))
        config = {
            "image_size": self.image_size,
            "num_query_tokens": self.num_query_tokens,
            "mean": self.mean,
            "std": self.std,
        }
        (directory / PROCESSOR_CONFIG).write_text(json.dumps(config, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> VideoChatProcessor:
        directory = Path(directory)
        config = json.loads((directory / PROCESSOR_CONFIG).read_text())
        return cls(tokenizer=AutoTokenizer.from_pretrained(str(directory)), **config)


class VisionTower(nn.Module):
    """A frame encoder from a spec: a timm ViT or a transformers vision model.

    Spec forms (JSON-able, saved with the backbone):
        ``{"type": "timm", "name": "vit_base_patch16_224", "kwargs": {...}, "checkpoint": path?}``
        ``{"type": "transformers", "config": {...}}`` or ``{"type": "transformers", "path": dir}``

    ``forward(frames (F, 3, S, S)) -> (F, N, D_v)`` patch tokens (prefix/CLS tokens dropped),
    ``N = grid[0] * grid[1]``.
    """

    def __init__(self, spec: dict) -> None:
        super().__init__()
        kind = spec.get("type")
        if kind == "timm":
            kwargs = dict(spec.get("kwargs", {}))
            checkpoint = spec.get("checkpoint")
            if checkpoint:
                kwargs["pretrained_cfg_overlay"] = {"file": str(checkpoint)}
            self.model = timm.create_model(spec["name"], pretrained=bool(checkpoint), num_classes=0, **kwargs)
            self.width = self.model.num_features
            self.grid = tuple(self.model.patch_embed.grid_size)
            self.num_prefix = self.model.num_prefix_tokens
        elif kind == "transformers":
            if "path" in spec:
                self.model = AutoModel.from_pretrained(spec["path"])
            else:
                config = dict(spec["config"])
                self.model = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
            config = self.model.config
            self.width = config.hidden_size
            side = config.image_size // config.patch_size
            self.grid = (side, side)
            self.num_prefix = None  # found from the first output
        else:
            raise ValueError(f"vision spec: 'type' must be 'timm' or 'transformers', got {spec!r}")
        self.kind = kind
        self.spec = {k: v for k, v in spec.items() if k not in ("checkpoint", "path")}
        if kind == "transformers" and "path" in spec:
            self.spec["config"] = self.model.config.to_dict()

    def forward(self, frames: Tensor) -> Tensor:
        if self.kind == "timm":
            tokens = self.model.forward_features(frames)
        else:
            tokens = self.model(pixel_values=frames).last_hidden_state
        num_patches = self.grid[0] * self.grid[1]
        return tokens[:, tokens.shape[1] - num_patches :]


@register_backbone(MODEL_TYPE)
class VideoChatBackbone(Backbone):
    """Vision tower + Q-Former connector + causal LM, with TPO task tokens.

    Args:
        vision: :class:`VisionTower` spec (see there).
        qformer: ``Blip2QFormerConfig`` keyword arguments (``encoder_hidden_size`` defaults to the
            vision width).
        llm: any ``AutoModelForCausalLM`` model.
        processor: a :class:`VideoChatProcessor` with the LLM's tokenizer.
        num_query_tokens: learnable queries per clip.
        max_frames: clip length the temporal embedding covers.
        task_tokens: task tokens to attach, or ``None``.

    ``forward(batch)`` reads ``input_ids``, ``attention_mask``, optional ``labels``,
    ``pixel_values_videos (C, T, 3, S, S)`` with ``video_frame_mask (C, T)`` (clips in row-major
    order of their ``<video>`` token runs) and ``prompt_boxes``. Its ``visual`` output is the vision
    tower's per-frame patch tokens ``(B, T, N, D_v)`` (``visual_dim = D_v``), all clips of a sample
    concatenated along ``T``.
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        *,
        vision: dict,
        qformer: dict,
        llm: nn.Module,
        processor: VideoChatProcessor,
        num_query_tokens: int = 32,
        max_frames: int = 16,
        task_tokens: TaskTokens | None = None,
    ) -> None:
        super().__init__()
        self.vision = VisionTower(vision)
        qformer = {"encoder_hidden_size": self.vision.width, **qformer}
        self.qformer_config = Blip2QFormerConfig(**qformer)
        self.qformer = Blip2QFormerModel(self.qformer_config)
        self.vision_norm = nn.LayerNorm(self.vision.width)
        self.queries = nn.Parameter(torch.randn(1, num_query_tokens, self.qformer_config.hidden_size) * 0.02)
        self.temporal_embed = nn.Parameter(torch.zeros(max_frames, self.vision.width))
        self.llm = llm
        self.projection = nn.Linear(self.qformer_config.hidden_size, llm.config.hidden_size)
        self.processor = processor
        self.num_query_tokens = num_query_tokens
        self.max_frames = max_frames
        self.visual_dim = self.vision.width
        self.task_tokens = None
        if task_tokens is not None:
            self.attach_task_tokens(task_tokens)

    @property
    def language_model(self) -> nn.Module:
        return self.llm

    def enable_modality_adaptive(self, num_modalities: int = 2):
        from tpo.backbones.modality_adaptive import ModalityAdaptive

        self.modality_adaptive = ModalityAdaptive.wrap(self.llm, num_modalities)
        return self.modality_adaptive

    def lora_scope(self) -> tuple[nn.Module, str]:
        return self.llm, ""

    def grid_size(self, num_tokens: int) -> tuple[int, int]:
        """The vision tower's patch grid when it has ``num_tokens`` tokens, else as the base class."""
        grid = tuple(self.vision.grid)
        return grid if grid[0] * grid[1] == num_tokens else super().grid_size(num_tokens)

    @property
    def video_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(VideoChatProcessor.video_token)

    def encode_clips(self, videos: Tensor, frame_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode clips.

        Args:
            videos: ``(C, T, 3, S, S)`` normalised frames.
            frame_mask: ``(C, T)`` bool, True for real frames (default: all).

        Returns:
            ``(F, N, D_v)`` patch tokens of the ``F`` real frames (clip-major) and ``(C, Q, D)``
            visual tokens for the LLM.
        """
        clips, frames = videos.shape[:2]
        if frames > self.max_frames:
            raise ValueError(
                f"pixel_values_videos: {frames} frames per clip, the temporal embedding "
                f"covers max_frames={self.max_frames}"
            )
        if frame_mask is None:
            frame_mask = torch.ones(clips, frames, dtype=torch.bool, device=videos.device)
        patch_tokens = self.vision(videos[frame_mask])
        grouped, mask = group_frames(patch_tokens, frame_mask.sum(1).tolist(), name="pixel_values_videos")
        grouped = self.vision_norm(grouped + self.temporal_embed[: grouped.shape[1], None])
        encoder_mask = mask[:, :, None].expand(-1, -1, grouped.shape[2]).flatten(1)
        queries = self.qformer(
            query_embeds=self.queries.expand(clips, -1, -1),
            encoder_hidden_states=grouped.flatten(1, 2),
            encoder_attention_mask=encoder_mask.long(),
        ).last_hidden_state
        return patch_tokens, self.projection(queries)

    def forward(self, batch: dict) -> BackboneOutput:
        """Run the model on a batch; see the class docstring for the keys."""
        input_ids = self.require(batch, "input_ids")
        with self.prompt_boxes(batch.get("prompt_boxes")):
            embeds = self.llm.get_input_embeddings()(input_ids)
        is_visual = input_ids == self.video_token_id
        visual = visual_mask = frames = None
        videos = batch.get("pixel_values_videos")
        num_clips = 0 if videos is None else videos.shape[0]
        if int(is_visual.sum()) != num_clips * self.num_query_tokens:
            raise ValueError(
                f"input_ids: {int(is_visual.sum())} video tokens, expected "
                f"{self.num_query_tokens} per clip for {num_clips} clips in "
                "pixel_values_videos"
            )
        if num_clips:
            frame_mask = batch.get("video_frame_mask")
            if frame_mask is None:
                frame_mask = torch.ones(videos.shape[:2], dtype=torch.bool, device=videos.device)
            patch_tokens, clip_tokens = self.encode_clips(videos, frame_mask)
            embeds = embeds.masked_scatter(is_visual[..., None], clip_tokens.to(embeds.dtype))
            clip_sample = is_visual.nonzero()[:: self.num_query_tokens, 0]
            frames_per_clip = frame_mask.sum(1)
            counts = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
            counts.index_add_(0, clip_sample, frames_per_clip)
            visual, visual_mask = group_frames(patch_tokens, counts.tolist(), name="visual tokens")
            frames, _ = group_frames(videos[frame_mask], counts.tolist(), name="frames")
        adaptive = self.modality_adaptive
        with adaptive.indicators(is_visual.long()) if adaptive is not None else nullcontext():
            out = self.llm(
                inputs_embeds=embeds,
                attention_mask=batch.get("attention_mask"),
                labels=batch.get("labels"),
                output_hidden_states=True,
                return_dict=True,
            )
        hidden = out.hidden_states[-1]
        return BackboneOutput(
            loss=out.loss,
            logits=out.logits,
            hidden_states=hidden,
            visual=visual,
            visual_mask=visual_mask,
            visual_grid=self.grid_size(visual.shape[2]) if visual is not None else None,
            frames=frames,
            tasks=self.gather_tasks(input_ids, hidden),
        )

    # ------------------------------------------------------------------ save / load
    def _connector_state(self) -> dict[str, Tensor]:
        return {
            k: v.contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith(("llm.", "task_tokens."))
        }

    def _save_model(self, directory: Path) -> dict:
        self.llm.save_pretrained(directory / "llm")
        self.processor.save_pretrained(directory / "processor")
        save_file(self._connector_state(), str(directory / CONNECTOR_WEIGHTS))
        config = {
            "vision": self.vision.spec,
            "qformer": self.qformer_config.to_diff_dict(),
            "num_query_tokens": self.num_query_tokens,
            "max_frames": self.max_frames,
        }
        (directory / MODEL_CONFIG).write_text(json.dumps(config, indent=2))
        return {}

    @classmethod
    def _load(cls, directory: Path, config: dict, **llm_kwargs) -> VideoChatBackbone:
        spec = json.loads((directory / MODEL_CONFIG).read_text())
        qformer = {
            k: v for k, v in spec["qformer"].items() if k not in ("model_type", "transformers_version")
        }
        backbone = cls(
            vision=spec["vision"],
            qformer=qformer,
            llm=AutoModelForCausalLM.from_pretrained(directory / "llm", **llm_kwargs),
            processor=VideoChatProcessor.from_pretrained(directory / "processor"),
            num_query_tokens=spec["num_query_tokens"],
            max_frames=spec["max_frames"],
        )
        missing, unexpected = backbone.load_state_dict(
            load_file(str(directory / CONNECTOR_WEIGHTS)), strict=False
        )
        missing = [k for k in missing if not k.startswith(("llm.", "task_tokens."))]
        if missing or unexpected:
            raise ValueError(f"{directory / CONNECTOR_WEIGHTS}: missing {missing}, unexpected {unexpected}")
        return backbone

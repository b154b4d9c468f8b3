"""TPO's segmentation head: the task embedding as the box prompt of a frozen SAM2, propagated
through the clip with SAM2's video memory (transformers' ``Sam2VideoModel``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Sam2VideoConfig, Sam2VideoModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.models.sam2_video.modeling_sam2_video import NO_OBJ_SCORE, get_1d_sine_pe

from tpo.heads.base import MLP, check_shape
from tpo.heads.mask import MaskOutput, MaskPrediction, mask_losses, postprocess_masks
from tpo.heads.track import TrackingOutput
from tpo.losses.mask import MaskCriterion
from tpo.losses.normalizers import normalizer
from tpo.ops.boxes import boxes_to_pixels, check_normalized_boxes
from tpo.ops.masks import MASK_THRESHOLD

__all__ = ["BOX_PROMPT_TOKENS", "SAM2MaskHead", "SAM2MaskOutput", "masks_to_boxes"]

BOX_PROMPT_TOKENS = 3
"""SAM2's sparse embedding of a box: the two corners (point labels 2 and 3) and a padding point."""

_BOX_CORNERS = 2
"""A box prompt counts as two points when SAM2 decides on multi-mask output."""


@dataclass
class SAM2MaskOutput(MaskOutput):
    """Raw output of :class:`SAM2MaskHead`.

    Attributes:
        masks: ``(B, T, H, W)`` mask logits at the frames' size (SAM2's ``S/4`` masks resized
            bilinearly); :data:`~transformers.models.sam2_video.modeling_sam2_video.NO_OBJ_SCORE`
            on frames where SAM2's object score is <= 0, as SAM2 gates them.
        iou: ``(B, T)`` SAM2's predicted IoU of each frame's mask.
        object_logits: ``(B, T)`` SAM2's object-score logits (the object is in the frame).
        prompts: ``(B, 3, C_p)`` the sparse prompt embeddings decoded on frame 0.
    """

    prompts: Tensor | None = None


class _Frame(NamedTuple):
    """One frame decoded by SAM2: ``low_res (B, S/4, S/4)`` and ``high_res (B, 1, S, S)`` mask
    logits, ``iou (B,)``, ``object_logits (B,)`` and the object ``pointer (B, C)``."""

    low_res: Tensor
    high_res: Tensor
    iou: Tensor
    object_logits: Tensor
    pointer: Tensor


class _Memory(NamedTuple):
    """SAM2's memory of one frame: ``features (h w, B, C_m)`` and ``position (h w, B, C_m)``."""

    features: Tensor
    position: Tensor


def masks_to_boxes(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Tight boxes around bool masks, in pixel-edge coordinates.

    A mask covering columns ``x0..x1`` and rows ``y0..y1`` (inclusive) gives the box from
    ``x0`` to ``x1 + 1``: ``cx = (x0 + x1 + 1) / 2W``, ``w = (x1 + 1 - x0) / W`` (likewise for y).

    Args:
        masks: ``(..., H, W)`` bool.

    Returns:
        ``boxes (..., 4)`` normalised (cx, cy, w, h), zeros where the mask is empty, and
        ``nonempty (...)`` bool.
    """
    if masks.dtype != torch.bool or masks.ndim < 2:
        raise ValueError(f"masks: expected (..., H, W) bool, got {masks.dtype} of shape {tuple(masks.shape)}")
    height, width = masks.shape[-2:]

    def extent(occupied: Tensor, size: int) -> tuple[Tensor, Tensor]:  # (..., size) -> first, last + 1
        index = torch.arange(size, device=masks.device)
        first = torch.where(occupied, index, size).amin(-1)
        last = torch.where(occupied, index, -1).amax(-1)
        return first.float(), last.float() + 1

    x0, x1 = extent(masks.any(-2), width)
    y0, y1 = extent(masks.any(-1), height)
    nonempty = masks.flatten(-2).any(-1)
    boxes = torch.stack(
        ((x0 + x1) / (2 * width), (y0 + y1) / (2 * height), (x1 - x0) / width, (y1 - y0) / height), -1
    )
    return torch.where(nonempty[..., None], boxes, 0.0), nonempty


def _as_lists(value: Any) -> Any:
    """``value`` with its tuples turned into lists, for comparing config fields."""
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _check_config(config: Sam2VideoConfig) -> None:
    """``ValueError`` naming the field unless the feature-map sizes of ``config`` follow from its
    ``image_size`` (transformers checks none of them and fails deep inside otherwise)."""
    size = config.image_size
    if not isinstance(size, int) or size % 16:
        raise ValueError(f"config.image_size: expected a multiple of 16 (one square side), got {size!r}")
    expected = {
        "vision_config.backbone_feature_sizes": (
            config.vision_config.backbone_feature_sizes,
            [[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
        ),
        "memory_attention_rope_feat_sizes": (config.memory_attention_rope_feat_sizes, [size // 16] * 2),
        "prompt_encoder_config.image_size": (config.prompt_encoder_config.image_size, size),
        "prompt_encoder_config.patch_size": (config.prompt_encoder_config.patch_size, 16),
    }
    for name, (got, want) in expected.items():
        if _as_lists(got) != want:
            raise ValueError(f"config.{name}: expected {want} for image_size {size}, got {got}")
    if config.num_maskmem < 1:
        raise ValueError(
            f"config.num_maskmem: expected >= 1 (the head tracks through memory), got {config.num_maskmem}"
        )


class SAM2MaskHead(nn.Module):
    """Task embedding -> SAM2 box-prompt embeddings on frame 0 -> frozen SAM2 video propagation.

    SAM2 turns a box prompt into :data:`BOX_PROMPT_TOKENS` sparse tokens (two corners and a
    padding point). An MLP maps the task embedding to these ``(B, 3, C_p)`` tokens; SAM2's mask
    decoder reads them on the first frame, and the clip is then segmented with SAM2's video
    memory as transformers' ``Sam2VideoModel`` tracks an object prompted on one frame: every
    later frame is decoded without prompt tokens from its image features conditioned, by the
    memory attention, on the memories of the prompted frame and of the ``num_maskmem - 1``
    previous frames and on the object pointers of up to ``max_object_pointers_in_encoder``
    frames. transformers runs that loop per object under ``torch.inference_mode``; here it is
    batched over the samples and differentiable, so the mask loss of every frame reaches the
    prompt (:meth:`propagate`; the tests check it against ``Sam2VideoModel``'s inference session).

    Training follows TPO: L1 between the predicted tokens and SAM2's prompt-encoder embedding of
    the true box on frame 0 (``loss_prompt``, the box taken from the frame-0 mask when only masks
    are given), plus :class:`~tpo.losses.mask.MaskCriterion`'s terms on all frames. SAM2 is
    frozen and stays in eval mode; only the adapter trains. Its output also serves tracking:
    :meth:`track` turns the propagated masks into per-frame boxes and visibility.

    Args:
        embed_dim: ``D``, size of the task embedding.
        config: a ``Sam2VideoConfig`` (or its keyword arguments) for a randomly initialised SAM2
            (tests, offline); ``None`` with ``pretrained`` unset: the default config, the size of
            sam2.1 hiera-t at 1024 px.
        pretrained: a local folder holding a transformers ``Sam2VideoModel`` (``config.json`` and
            weights, as ``save_pretrained`` writes them); loaded in float32. Nothing is downloaded.
        hidden_dim: width of the adapter MLP.
        weight_prompt: weight of ``loss_prompt`` in :attr:`weight_dict`.
        criterion: mask loss; default :class:`MaskCriterion` (focal 20, dice 1, IoU-MSE 1,
            object score 1).
        grad_through_memory: let the loss of frames 1..T-1 reach the prompt through SAM2's memory
            (object pointers, memory features). ``False`` decodes those frames without autograd,
            saving the activations of their memory attention; their masks still follow the prompt.

    Attributes:
        sam2: the frozen ``Sam2VideoModel``.
        image_size: ``S``, SAM2's square input size in pixels.
        prompt_dim: ``C_p``, SAM2's prompt embedding width.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        config: Sam2VideoConfig | Mapping[str, Any] | None = None,
        pretrained: str | Path | None = None,
        hidden_dim: int = 256,
        weight_prompt: float = 1.0,
        criterion: MaskCriterion | None = None,
        grad_through_memory: bool = True,
    ):
        super().__init__()
        if pretrained is not None:
            if config is not None:
                raise ValueError("config: give config (a random SAM2) or pretrained (a folder), not both")
            self.sam2 = _load_sam2(Path(pretrained))
        else:
            if isinstance(config, Mapping):
                config = Sam2VideoConfig(**config)
            elif config is None:
                config = Sam2VideoConfig()
            elif not isinstance(config, Sam2VideoConfig):
                raise ValueError(f"config: expected a Sam2VideoConfig or a dict, got {type(config).__name__}")
            _check_config(config)
            self.sam2 = Sam2VideoModel(config)
        self.sam2.requires_grad_(False)
        self.sam2.eval()
        self.embed_dim = embed_dim
        self.image_size: int = self.sam2.config.image_size
        self.prompt_dim: int = self.sam2.config.prompt_encoder_config.hidden_size
        self.adapter = MLP(
            in_dim=embed_dim, hidden_dim=hidden_dim, out_dim=BOX_PROMPT_TOKENS * self.prompt_dim, num_layers=2
        )
        self.weight_prompt = weight_prompt
        self.criterion = criterion if criterion is not None else MaskCriterion()
        self.grad_through_memory = grad_through_memory
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None], False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None], False)

    @classmethod
    def from_pretrained(cls, pretrained: str | Path, **kwargs: Any) -> SAM2MaskHead:
        """The head on the SAM2 saved in the local folder ``pretrained`` (a transformers
        ``Sam2VideoModel``); ``kwargs`` are the other constructor arguments."""
        return cls(pretrained=pretrained, **kwargs)

    def train(self, mode: bool = True) -> SAM2MaskHead:
        """Set the adapter's mode; SAM2 always stays in eval mode."""
        super().train(mode)
        self.sam2.eval()
        return self

    def forward(self, task_embeds: Tensor, frames: Tensor) -> SAM2MaskOutput:
        """Segment the object described by the task embedding in every frame of the clip.

        Args:
            task_embeds: ``(B, D)`` task embedding (LLM hidden state at the seg token).
            frames: ``(B, T, 3, H, W)`` RGB in [0, 1]; frame 0 is the prompted frame. Resized to
                ``S x S`` and normalised with the ImageNet mean and std inside, as SAM2's video
                processor does.
        """
        check_shape(task_embeds, "task_embeds", ("B", "D"), {"D": (self.embed_dim, "embed_dim")})
        prompts = self.adapter(task_embeds).unflatten(-1, (BOX_PROMPT_TOKENS, self.prompt_dim))
        return self.propagate(prompts, frames)

    def propagate(self, prompts: Tensor, frames: Tensor) -> SAM2MaskOutput:
        """SAM2's masks of the object prompted on frame 0 by sparse embeddings, for every frame.

        Args:
            prompts: ``(B, 3, C_p)`` sparse prompt embeddings, e.g. :meth:`box_prompt` of a box.
            frames: ``(B, T, 3, H, W)`` RGB in [0, 1], as in :meth:`forward`.
        """
        sizes = check_shape(prompts, "prompts", ("B", BOX_PROMPT_TOKENS, self.prompt_dim))
        sizes.update(check_shape(frames, "frames", (sizes["B"], "T", 3, "H", "W")))
        batch, length = sizes["B"], sizes["T"]
        if length == 0:
            raise ValueError(f"frames: expected at least one frame, got shape {tuple(frames.shape)}")
        with torch.no_grad():
            vision = self.sam2.get_image_features(self._pixels(frames), return_dict=True)
        levels = [f.unflatten(1, (batch, length)) for f in vision.fpn_hidden_states]  # (h_l w_l, B, T, C_l)
        positions = vision.fpn_position_encoding[-1].unflatten(1, (batch, length))  # (h w, B, T, C)
        empty_sparse, dense = self.sam2.prompt_encoder(
            input_points=prompts.new_zeros(batch, 1, 1, 2),
            input_labels=-torch.ones(batch, 1, 1, dtype=torch.int32, device=prompts.device),
            input_boxes=None,
            input_masks=None,
        )
        image_pe = self.sam2.get_image_wide_positional_embeddings().expand(batch, -1, -1, -1)
        decoded: list[_Frame] = []
        memories: list[_Memory] = []
        for t in range(length):
            features = [level[:, :, t] for level in levels]
            track_grad = torch.is_grad_enabled() and (t == 0 or self.grad_through_memory)
            with torch.set_grad_enabled(track_grad):
                if t == 0:
                    image = features[-1] + self.sam2.no_memory_embedding
                    sparse, multimask = prompts[:, None], self._multimask(_BOX_CORNERS, prompted=True)
                else:
                    image = self._condition_on_memory(
                        features[-1], positions[:, :, t], memories, decoded, length
                    )
                    sparse, multimask = empty_sparse, self._multimask(0, prompted=False)
                frame = self._decode(image, features[:-1], sparse, dense, image_pe, multimask)
                decoded.append(frame)
                if t < length - 1:  # the last frame's memory is never read
                    memories.append(self._encode_memory(features[-1], frame, from_prompt=t == 0))
        masks = torch.stack([f.low_res for f in decoded], 1)  # (B, T, S/4, S/4)
        return SAM2MaskOutput(
            masks=F.interpolate(masks.float(), size=frames.shape[-2:], mode="bilinear", align_corners=False),
            iou=torch.stack([f.iou for f in decoded], 1),
            object_logits=torch.stack([f.object_logits for f in decoded], 1),
            prompts=prompts,
        )

    def _pixels(self, frames: Tensor) -> Tensor:
        """``(B, T, 3, H, W)`` RGB in [0, 1] -> ``(B T, 3, S, S)`` SAM2 input."""
        low, high = float(frames.min()), float(frames.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"frames: expected RGB values in [0, 1], got values in [{low:.3g}, {high:.3g}] "
                "(undo the backbone's normalisation first)"
            )
        pixels = frames.flatten(0, 1).to(self.pixel_mean.dtype)
        size = (self.image_size, self.image_size)
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (pixels - self.pixel_mean) / self.pixel_std

    def _multimask(self, num_points: int, *, prompted: bool) -> bool:
        """Whether SAM2 decodes three masks and keeps the best (``Sam2VideoModel._use_multimask``)."""
        config = self.sam2.config
        return (
            config.multimask_output_in_sam
            and (prompted or config.multimask_output_for_tracking)
            and config.multimask_min_pt_num <= num_points <= config.multimask_max_pt_num
        )

    def _decode(
        self,
        image: Tensor,
        high_res_features: list[Tensor],
        sparse: Tensor,
        dense: Tensor,
        image_pe: Tensor,
        multimask: bool,
    ) -> _Frame:
        """SAM2's mask decoder on one frame, as ``Sam2VideoModel._single_frame_forward`` after the
        prompt encoder: masks gated by the object score, the best of three when ``multimask``.

        Args:
            image: ``(h w, B, C)`` the frame's (memory-conditioned) image embedding.
            high_res_features: SAM2's projected stride-4 and stride-8 features, ``(h_l w_l, B, C_l)``.
            sparse: ``(B, 1, n, C)`` prompt tokens; dense: ``(B, C, h, w)``; image_pe: ``(B, C, h, w)``.
        """
        batch = image.shape[1]
        feature_sizes = self.sam2.backbone_feature_sizes
        skips = [
            x.permute(1, 2, 0).reshape(batch, x.shape[-1], *size)
            for x, size in zip(high_res_features, feature_sizes[:-1], strict=True)
        ]
        masks, iou, tokens, object_logits = self.sam2.mask_decoder(
            image_embeddings=image.permute(1, 2, 0).reshape(batch, -1, *feature_sizes[-1]),
            image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            high_resolution_features=skips,
        )
        masks, iou, tokens, object_logits = masks[:, 0], iou[:, 0], tokens[:, 0], object_logits[:, 0, 0]
        best = iou.argmax(-1) if multimask else torch.zeros(batch, dtype=torch.long, device=iou.device)
        rows = torch.arange(batch, device=iou.device)
        appearing = (object_logits > 0)[:, None, None, None]
        masks = torch.where(appearing, masks, NO_OBJ_SCORE)
        high_res = F.interpolate(  # all masks, then the best one, as SAM2 rounds (its memory amplifies it)
            masks.float(), size=(self.image_size,) * 2, mode="bilinear", align_corners=False
        ).to(masks.dtype)
        pointer = self.sam2.object_pointer_proj(tokens[rows, best])
        present = appearing[:, :, 0, 0].to(pointer.dtype)
        pointer = present * pointer + (1 - present) * self.sam2.no_object_pointer
        high_res = high_res[rows, best][:, None]
        return _Frame(masks[rows, best], high_res, iou[rows, best], object_logits, pointer)

    def _encode_memory(self, image: Tensor, frame: _Frame, *, from_prompt: bool) -> _Memory:
        """SAM2's memory of a decoded frame (``Sam2VideoModel._encode_new_memory``): the prompted
        frame's mask binarised, a tracked frame's as its sigmoid; stored in bfloat16 as SAM2 does.

        Args:
            image: ``(h w, B, C)`` the frame's raw image embedding.
            frame: the decoded frame.
        """
        config, batch = self.sam2.config, image.shape[1]
        masks = frame.high_res
        mask_size = tuple(4 * s for s in self.sam2.prompt_encoder.mask_input_size)
        if tuple(masks.shape[-2:]) != mask_size:
            masks = F.interpolate(masks.float(), size=mask_size, mode="bilinear", align_corners=False,
                                  antialias=True).to(masks.dtype)
        masks = (masks > 0).to(masks.dtype) if from_prompt else masks.sigmoid()
        masks = masks * config.sigmoid_scale_for_mem_enc + config.sigmoid_bias_for_mem_enc
        image = image.permute(1, 2, 0).reshape(batch, -1, *self.sam2.backbone_feature_sizes[-1])
        features, position = self.sam2.memory_encoder(image, masks)
        occlusion = self.sam2.occlusion_spatial_embedding_parameter
        if occlusion is not None:
            absent = (frame.object_logits <= 0).to(features.dtype)[:, None, None, None]
            features = features + absent * occlusion[..., None, None]
        return _Memory(
            features.to(torch.bfloat16).flatten(2).permute(2, 0, 1),
            position.to(masks.dtype).flatten(2).permute(2, 0, 1),
        )

    def _condition_on_memory(
        self, image: Tensor, position: Tensor, memories: list[_Memory], decoded: list[_Frame], length: int
    ) -> Tensor:
        """Frame ``t = len(decoded)``'s image embedding ``(h w, B, C)`` after SAM2's memory attention
        (``Sam2VideoModel._prepare_memory_conditioned_features`` with frame 0 as the only
        conditioning frame, tracking forward in a clip of ``length`` frames).

        Args:
            image: ``(h w, B, C)`` the frame's image embedding; position: its ``(h w, B, C)`` encoding.
            memories: the memories of frames ``0 .. t - 1``; decoded: those frames' outputs.
        """
        sam2, config = self.sam2, self.sam2.config
        t, batch, channels = len(decoded), image.shape[1], image.shape[2]
        temporal = sam2.memory_temporal_positional_encoding  # (num_maskmem, 1, 1, C_m)
        # the prompted frame (temporal slot -1 as SAM2's conditioning frames), then the previous
        # num_maskmem - 1 tracked frames, farthest first
        slots = [(0, -1)] + [(t - k, k - 1) for k in range(sam2.num_maskmem - 1, 0, -1) if t - k >= 1]
        tokens = [memories[i].features for i, _ in slots]
        encodings = [memories[i].position + temporal[slot] for i, slot in slots]
        # object pointers: the prompted frame's and the tracked frames' within max_pointers
        max_pointers = min(length, config.max_object_pointers_in_encoder)
        offsets = [t] + [k for k in range(1, max_pointers) if t - k >= 1]
        pointers = torch.stack([decoded[t - k].pointer for k in offsets])  # (P, B, C)
        if config.enable_temporal_pos_encoding_for_object_pointers:
            steps = torch.tensor(offsets, device=image.device, dtype=torch.float32) / (max_pointers - 1)
            sine = get_1d_sine_pe(steps, dim=channels).to(pointers.dtype)
            pointer_pe = sam2.temporal_positional_encoding_projection_layer(sine)
            pointer_pe = pointer_pe[:, None].expand(-1, batch, -1)
        else:
            pointer_pe = pointers.new_zeros(len(offsets), batch, sam2.mem_dim)
        if sam2.mem_dim < channels:  # each pointer split into C / C_m tokens
            splits = channels // sam2.mem_dim
            pointers = pointers.reshape(-1, batch, splits, sam2.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
            pointer_pe = pointer_pe.repeat_interleave(splits, dim=0)
        conditioned = sam2.memory_attention(
            current_vision_features=image,
            current_vision_position_embeddings=position,
            memory=torch.cat([*tokens, pointers]).to(image.dtype),
            memory_posision_embeddings=torch.cat([*encodings, pointer_pe]),
            num_object_pointer_tokens=pointers.shape[0],
        )  # (1, B, h w, C)
        return conditioned[0].transpose(0, 1)

    @torch.no_grad()
    def box_prompt(self, boxes: Tensor) -> Tensor:
        """SAM2's sparse embedding of box prompts: ``(B, 4)`` normalised cxcywh -> ``(B, 3, C_p)``.

        The box is scaled to SAM2's ``S x S`` input (the frames are resized to it without keeping
        the aspect ratio) and embedded by SAM2's prompt encoder: two corners and a padding point.
        """
        xyxy = boxes_to_pixels(boxes, (self.image_size, self.image_size))
        sparse, _ = self.sam2.prompt_encoder(
            input_points=None, input_labels=None, input_boxes=xyxy[:, None], input_masks=None
        )
        return sparse[:, 0]

    def track(self, output: SAM2MaskOutput) -> TrackingOutput:
        """Tracking boxes from the propagated masks (TPO's tracking path through SAM2).

        Returns:
            :class:`~tpo.heads.track.TrackingOutput` with ``boxes (B, T, 4)`` normalised cxcywh
            around each frame's mask (logits > :data:`~tpo.ops.masks.MASK_THRESHOLD`; zeros when
            empty) and ``visible (B, T)`` logits: SAM2's object score, ``NO_OBJ_SCORE`` where the
            mask is empty.
        """
        boxes, nonempty = masks_to_boxes(output.masks.detach() > MASK_THRESHOLD)
        visible = torch.where(nonempty, output.object_logits.detach().float(), NO_OBJ_SCORE)
        return TrackingOutput(boxes=boxes, visible=visible)

    @property
    def weight_dict(self) -> dict[str, float]:
        """``{term: weight}``: the mask criterion's and ``loss_prompt``'s (``weight_prompt``)."""
        return {**self.criterion.weight_dict, "loss_prompt": self.weight_prompt}

    @property
    def loss_count_keys(self) -> tuple[str, ...]:
        """The items the terms average over: the ``"prompts"`` and the mask criterion's."""
        return ("prompts", *self.criterion.count_keys)

    def _prompt_boxes(
        self, output: SAM2MaskOutput, targets: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor] | None:
        """The true frame-0 boxes ``(B, 4)`` and which samples have one ``(B,)`` bool: ``"boxes"``
        when given, else the boxes around the frame-0 ``"masks"``; ``None`` without either."""
        batch = output.prompts.shape[0]
        if "boxes" in targets:
            boxes = targets["boxes"]
            check_shape(boxes, "targets['boxes']", (batch, 4))
            check_normalized_boxes(boxes, "targets['boxes']")
            boxes = boxes.float().to(output.prompts.device)
            return boxes, torch.ones(batch, dtype=torch.bool, device=boxes.device)
        if "masks" in targets:
            masks = targets["masks"]
            check_shape(masks, "targets['masks']", (batch, "T", "H", "W"))
            boxes, nonempty = masks_to_boxes(masks[:, 0].to(output.prompts.device) != 0)
            return boxes, nonempty
        return None

    def loss_counts(self, output: SAM2MaskOutput, targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``"prompts"`` (samples with a true frame-0 box) and the mask criterion's counts."""
        prompt = self._prompt_boxes(output, targets)
        counts = {"prompts": prompt[1].sum().float() if prompt is not None else torch.zeros(())}
        if "masks" in targets:
            counts.update(self.criterion.counts(targets["masks"], object_scores=True))
        return counts

    def loss(
        self,
        output: SAM2MaskOutput,
        targets: Mapping[str, Tensor],
        *,
        normalizers: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted ``loss_prompt`` and, with ``"masks"``, the mask criterion's ``loss_mask``,
        ``loss_dice``, ``loss_iou`` and ``loss_class``; weights in :attr:`weight_dict`.

        ``loss_prompt`` is the mean absolute difference between ``output.prompts`` and
        :meth:`box_prompt` of the true frame-0 box, over the samples that have one.

        Args:
            output: this head's forward output.
            targets: ``"masks"`` ``(B, T, H, W)`` bool with the frames' aspect ratio and/or
                ``"boxes"`` ``(B, 4)`` normalised cxcywh of the object on frame 0 (default: the box
                around the frame-0 mask; samples whose frame-0 mask is empty have none).
            normalizers: the denominators of the terms' means over all processes
                (:mod:`tpo.losses.normalizers`); default this batch's :meth:`loss_counts`.
        """
        if not isinstance(targets, Mapping):
            raise ValueError(
                f"targets: expected a dict with 'masks' and/or 'boxes', got {type(targets).__name__}"
            )
        prompt = self._prompt_boxes(output, targets)
        if prompt is None:
            raise ValueError("targets: expected 'masks' ((B, T, H, W) bool) and/or 'boxes' ((B, 4) cxcywh)")
        boxes, valid = prompt
        valid = valid.to(output.prompts.device)
        target = self.box_prompt(boxes)
        error = ((output.prompts.float() - target.float()).abs() * valid[:, None, None]).sum()
        num = normalizer(normalizers, "prompts", valid.sum().float())
        losses = {"loss_prompt": error / (num * output.prompts[0].numel())}
        if "masks" in targets:
            losses.update(mask_losses(self.criterion, output, targets["masks"], normalizers))
        return losses

    def postprocess(self, output: SAM2MaskOutput, meta: Sequence[Mapping[str, Any]]) -> list[MaskPrediction]:
        """Bool masks at ``meta[b]["image_size"]``, as :meth:`MaskHead.postprocess
        <tpo.heads.mask.MaskHead.postprocess>` (frames with an object score < 0 empty)."""
        return postprocess_masks(output, meta)


_SAM2_MODEL_TYPES = ("sam2_video", "sam2")
"""``model_type`` of the folders ``pretrained`` reads: SAM2's video model, or a SAM2 folder saved as
the image model when it holds the video weights too (checked: none may be missing)."""


def _load_sam2(folder: Path) -> Sam2VideoModel:
    """The ``Sam2VideoModel`` saved in ``folder``, from local files only, in float32; every weight
    must come from the folder (an image-only ``Sam2Model`` lacks the memory modules)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"pretrained: {folder} is not a folder with a transformers Sam2VideoModel (no config.json)"
        )
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type not in _SAM2_MODEL_TYPES:
        raise ValueError(
            f"pretrained: {config_file} is a {model_type!r} model; expected one of {list(_SAM2_MODEL_TYPES)}"
        )
    sam2, info = Sam2VideoModel.from_pretrained(
        folder, local_files_only=True, dtype=torch.float32, output_loading_info=True
    )
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"pretrained: {folder} lacks {len(missing)} weights of SAM2's video model (e.g. {missing[:3]}); "
            "an image-only Sam2Model has no memory modules"
        )
    _check_config(sam2.config)
    return sam2

"""TPO's segmentation head: the task embedding as a sparse prompt of a frozen SAM2.

Needs the optional ``sam2`` package (``pip install sam2``); importing this module without it
raises ``ImportError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sam2.build_sam import build_sam2
from torch import Tensor, nn

from tpo.heads.base import MLP, check_shape
from tpo.heads.mask import MaskOutput, MaskPrediction, mask_losses, postprocess_masks
from tpo.losses.mask import MaskCriterion
from tpo.losses.normalizers import normalizer
from tpo.ops.boxes import boxes_to_pixels, check_normalized_boxes

__all__ = ["SAM2MaskHead", "SAM2MaskOutput"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SAM2MaskOutput(MaskOutput):
    """Raw output of :class:`SAM2MaskHead`.

    Attributes:
        masks: ``(B, T, S/4, S/4)`` SAM2 low-resolution mask logits (``S`` = image size).
        iou: ``(B, T)`` SAM2's predicted IoU.
        prompts: ``(B, 3, C_p)`` predicted sparse prompt embeddings (``C_p`` = 256 in SAM2).
    """

    prompts: Tensor | None = None


class SAM2MaskHead(nn.Module):
    """Task embedding -> SAM2 sparse prompt (two box corners + padding point) -> frozen SAM2.

    SAM2 turns a box prompt into three sparse tokens: the two corners (labels 2 and 3) and a
    padding point. An MLP maps the task embedding to these ``(B, 3, C_p)`` tokens, which the
    frozen SAM2 mask decoder reads together with SAM2's own image features of every frame (no
    dense prompt, single-mask output). Training follows TPO: L1 between the predicted tokens
    and SAM2's prompt-encoder embedding of the ground-truth box (``loss_prompt``), plus the mask
    loss when masks are given. Frames are decoded independently with the shared prompt (no
    SAM2 memory propagation). SAM2 stays frozen and in eval mode; only the adapter trains.

    Args:
        embed_dim: ``D``, size of the task embedding.
        config: SAM2 config name inside the ``sam2`` package.
        checkpoint: local SAM2 checkpoint (``.pt``); ``None`` keeps the random initialisation
            (tests). Nothing is ever downloaded.
        image_size: ``S``, SAM2 input size in pixels (1024 for the released weights; any
            multiple of 32, e.g. 128 for tests).
        hidden_dim: width of the adapter MLP.
        weight_prompt: weight of ``loss_prompt`` in :attr:`weight_dict`.
        criterion: mask loss; default :class:`MaskCriterion` (focal 20, dice 1, IoU-MSE 1).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        config: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
        checkpoint: str | Path | None = None,
        image_size: int = 1024,
        hidden_dim: int = 256,
        weight_prompt: float = 1.0,
        criterion: MaskCriterion | None = None,
    ):
        super().__init__()
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint: SAM2 checkpoint {checkpoint} does not exist")
        if image_size % 32:
            raise ValueError(f"image_size: expected a multiple of 32, got {image_size}")
        self.image_size = image_size
        self.sam2 = build_sam2(
            config,
            ckpt_path=None if checkpoint is None else str(checkpoint),
            device="cpu",
            mode="eval",
            hydra_overrides_extra=[f"++model.image_size={image_size}"],
            apply_postprocessing=False,
        )
        self.sam2.requires_grad_(False)
        self.prompt_dim = self.sam2.sam_prompt_encoder.embed_dim
        self.adapter = MLP(
            in_dim=embed_dim, hidden_dim=hidden_dim, out_dim=3 * self.prompt_dim, num_layers=2
        )
        self.weight_prompt = weight_prompt
        self.criterion = criterion if criterion is not None else MaskCriterion()
        self.register_buffer("pixel_mean", torch.tensor(_IMAGENET_MEAN)[:, None, None], False)
        self.register_buffer("pixel_std", torch.tensor(_IMAGENET_STD)[:, None, None], False)

    def train(self, mode: bool = True) -> SAM2MaskHead:
        """Set the adapter's mode; SAM2 always stays in eval mode."""
        super().train(mode)
        self.sam2.eval()
        return self

    @torch.no_grad()
    def _image_features(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """SAM2 image embedding ``(N, C, S/16, S/16)`` and high-resolution features."""
        backbone_out = self.sam2.forward_image((images - self.pixel_mean) / self.pixel_std)
        _, feats, _, sizes = self.sam2._prepare_backbone_features(backbone_out)
        if self.sam2.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + self.sam2.no_mem_embed
        maps = [
            f.permute(1, 2, 0).reshape(f.shape[1], -1, *s)
            for f, s in zip(feats, sizes, strict=True)
        ]
        return maps[-1], maps[:-1]

    def forward(self, task_embeds: Tensor, images: Tensor) -> SAM2MaskOutput:
        """Segment the object described by the task embedding in every frame.

        Args:
            task_embeds: ``(B, D)`` task embedding (LLM hidden state at the seg token).
            images: ``(B, T, 3, S, S)`` RGB frames in [0, 1] at SAM2's input size (normalised
                with the ImageNet mean and std inside).
        """
        size = self.image_size
        sizes = check_shape(task_embeds, "task_embeds", ("B", "D"))
        sizes.update(check_shape(images, "images", (sizes["B"], "T", 3, size, size)))
        batch, length = sizes["B"], sizes["T"]
        prompts = self.adapter(task_embeds).unflatten(-1, (3, self.prompt_dim))
        image_embed, high_res = self._image_features(images.flatten(0, 1).float())
        encoder = self.sam2.sam_prompt_encoder
        dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            batch * length, -1, *image_embed.shape[-2:]
        )
        masks, iou, _, _ = self.sam2.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=encoder.get_dense_pe(),
            sparse_prompt_embeddings=prompts.repeat_interleave(length, dim=0),
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=high_res if self.sam2.use_high_res_features_in_sam else None,
        )
        return SAM2MaskOutput(
            masks=masks[:, 0].unflatten(0, (batch, length)),
            iou=iou[:, 0].unflatten(0, (batch, length)),
            prompts=prompts,
        )

    @torch.no_grad()
    def box_prompt(self, boxes: Tensor) -> Tensor:
        """SAM2's sparse embedding of box prompts: ``(B, 4)`` cxcywh -> ``(B, 3, C_p)``.

        As ``SAM2Base`` does, the box becomes two corner points (labels 2, 3) and the prompt
        encoder appends its padding point.
        """
        xyxy = boxes_to_pixels(boxes, (self.image_size, self.image_size))
        labels = torch.tensor([[2, 3]], device=boxes.device).expand(boxes.shape[0], -1)
        sparse, _ = self.sam2.sam_prompt_encoder(
            points=(xyxy.reshape(-1, 2, 2), labels), boxes=None, masks=None
        )
        return sparse

    @property
    def weight_dict(self) -> dict[str, float]:
        """``{term: weight}``: the mask criterion's and ``loss_prompt``'s (``weight_prompt``)."""
        return {**self.criterion.weight_dict, "loss_prompt": self.weight_prompt}

    @property
    def loss_count_keys(self) -> tuple[str, ...]:
        """The items the terms average over: the ``"prompts"`` and the mask criterion's."""
        return ("prompts", *self.criterion.count_keys)

    def loss_counts(self, output: SAM2MaskOutput, targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``"prompts"`` (samples with a target box) and the mask criterion's counts."""
        counts = {"prompts": torch.tensor(float(output.prompts.shape[0]) if "boxes" in targets else 0.0)}
        if "masks" in targets:
            scored = output.object_logits is not None
            counts.update(self.criterion.counts(targets["masks"], object_scores=scored))
        return counts

    def loss(
        self,
        output: SAM2MaskOutput,
        targets: Mapping[str, Tensor],
        *,
        normalizers: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted ``loss_prompt`` (when ``"boxes"`` given) and mask terms (when ``"masks"``
        given); weights in :attr:`weight_dict`.

        Args:
            output: this head's forward output.
            targets: ``"boxes"`` ``(B, 4)`` normalised cxcywh of the object in the prompt
                frame and/or ``"masks"`` ``(B, T, H, W)`` bool with the aspect ratio of the
                frames.
            normalizers: the denominators of the terms' means over all processes
                (:mod:`tpo.losses.normalizers`); default this batch's :meth:`loss_counts`.
        """
        if "boxes" not in targets and "masks" not in targets:
            raise ValueError("targets: expected 'boxes' ((B, 4) cxcywh) and/or 'masks'")
        losses: dict[str, Tensor] = {}
        if "boxes" in targets:
            boxes = targets["boxes"]
            check_shape(boxes, "targets['boxes']", (output.prompts.shape[0], 4))
            check_normalized_boxes(boxes, "targets['boxes']")
            target = self.box_prompt(boxes.float().to(output.prompts.device))
            error = (output.prompts.float() - target).abs().sum()
            num = normalizer(normalizers, "prompts", torch.tensor(float(len(boxes)), device=error.device))
            losses["loss_prompt"] = error / (num * output.prompts[0].numel())
        if "masks" in targets:
            losses.update(mask_losses(self.criterion, output, targets["masks"], normalizers))
        return losses

    def postprocess(
        self, output: SAM2MaskOutput, meta: Sequence[Mapping[str, Any]]
    ) -> list[MaskPrediction]:
        """Bool masks at ``meta[b]["image_size"]``, as :meth:`MaskHead.postprocess`."""
        return postprocess_masks(output, meta)

"""SAM-style promptable mask decoder driven by the task embedding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.heads.base import (
    DETR_MLP_LAYERS,
    MLP,
    CountedLoss,
    check_shape,
    meta_size,
    sine_position_1d,
    sine_position_2d,
)
from tpo.losses.mask import MaskCriterion
from tpo.ops.masks import MASK_THRESHOLD, OBJECT_SCORE_THRESHOLD, resize_mask_logits

__all__ = [
    "HIGH_RES_SCALES",
    "MaskHead",
    "MaskOutput",
    "MaskPrediction",
    "TwoWayTransformer",
    "UPSCALE_DIVISORS",
    "UPSCALE_FACTOR",
    "mask_losses",
    "postprocess_masks",
]

UPSCALE_FACTOR = 2
"""Each of the two upscaling stages (a transposed convolution, kernel = stride = 2) doubles the
grid: the masks are 4x the image grid."""

UPSCALE_DIVISORS = (4, 8)
"""Channels of the two 2x upscaling stages as divisors of ``hidden_dim`` (SAM: ``d / 4`` at 2x the
image grid, then ``d / 8`` at 4x, the mask resolution)."""

HIGH_RES_SCALES = (UPSCALE_FACTOR**2, UPSCALE_FACTOR)
"""Sizes of the optional high-resolution features relative to the image grid, in ``high_res``
order: ``(C_4x, 4h, 4w)`` joins the second upscaling stage, ``(C_2x, 2h, 2w)`` the first (SAM2's
FPN levels at strides 4 and 8 next to the image embedding's 16)."""


@dataclass
class MaskOutput:
    """Raw output of :class:`MaskHead`.

    Attributes:
        masks: ``(B, T, H, W)`` mask logits, ``H = 4 h``, ``W = 4 w`` of the image grid.
        iou: ``(B, T)`` predicted IoU of each thresholded mask, in [0, 1].
        object_logits: ``(B, T)`` logit that the object is in the frame (SAM2's object score);
            ``None`` for heads without one. Post-processing empties the frames where it is < 0.
    """

    masks: Tensor
    iou: Tensor
    object_logits: Tensor | None = None


@dataclass
class MaskPrediction:
    """Masks of one sample: ``masks (T, H, W)`` bool at the image size, ``scores (T,)``."""

    masks: Tensor
    scores: Tensor


class _Attention(nn.Module):
    """Multi-head attention with a down-projected inner width (SAM's ``Attention``)."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide {inner}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q (B, Lq, dim)``, ``k (B, Lk, dim)``, ``v (B, Lk, dim)`` -> ``(B, Lq, dim)``."""
        q, k, v = self.q_proj(q), self.k_proj(k), self.v_proj(v)
        q, k, v = self._split(q), self._split(k), self._split(v)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _TwoWayBlock(nn.Module):
    """SAM's ``TwoWayAttentionBlock``: token self-attention, tokens -> image, token MLP,
    image -> tokens, each followed by its LayerNorm. The first block's self-attention skips the
    token positions (``skip_pe``)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample: int, skip_pe: bool):
        super().__init__()
        self.skip_pe = skip_pe
        self.self_attn = _Attention(dim, num_heads)
        self.token_to_image = _Attention(dim, num_heads, downsample)
        self.image_to_token = _Attention(dim, num_heads, downsample)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, dim))
        self.self_attn_norm = nn.LayerNorm(dim)
        self.token_to_image_norm = nn.LayerNorm(dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.image_to_token_norm = nn.LayerNorm(dim)

    def forward(
        self, tokens: Tensor, image: Tensor, token_pe: Tensor, image_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``tokens (B, L, d)``, ``image (B, N, d)``, ``token_pe (B, L, d)``, ``image_pe (N, d)``
        -> updated ``tokens (B, L, d)`` and ``image (B, N, d)``."""
        if self.skip_pe:
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            q = tokens + token_pe
            tokens = tokens + self.self_attn(q, q, tokens)
        tokens = self.self_attn_norm(tokens)
        attn = self.token_to_image(tokens + token_pe, image + image_pe, image)
        tokens = self.token_to_image_norm(tokens + attn)
        tokens = self.mlp_norm(tokens + self.mlp(tokens))
        attn = self.image_to_token(image + image_pe, tokens + token_pe, tokens)
        image = self.image_to_token_norm(image + attn)
        return tokens, image


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer: prompt tokens and image tokens attend to each other.

    ``forward(tokens (B, L, d), image (B, N, d), image_pe (N, d)) -> (tokens, image)``.
    """

    def __init__(self, *, dim: int, num_heads: int, num_layers: int, mlp_dim: int, downsample: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(
            _TwoWayBlock(dim, num_heads, mlp_dim, downsample, skip_pe=(i == 0)) for i in range(num_layers)
        )
        self.final_attn = _Attention(dim, num_heads, downsample)
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, image: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
        """Returns updated ``tokens (B, L, d)`` and ``image (B, N, d)``."""
        token_pe = tokens
        for layer in self.layers:
            tokens, image = layer(tokens, image, token_pe, image_pe)
        attn = self.final_attn(tokens + token_pe, image + image_pe, image)
        return self.final_norm(tokens + attn), image


class _LayerNorm2d(nn.Module):
    """LayerNorm over the channels of ``(B, C, H, W)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _init_as_nearest_upsampling(conv: nn.ConvTranspose2d) -> None:
    """ICNR initialisation (Aitken et al., 2017): the four sub-pixel kernels of a 2x2 stride-2
    transposed convolution start equal, so it starts as nearest-neighbour upsampling followed by a
    1x1 convolution and the masks start free of checkerboard artifacts."""
    with torch.no_grad():
        conv.weight.copy_(conv.weight[:, :, :1, :1].expand_as(conv.weight))


class MaskHead(CountedLoss, nn.Module):
    """Promptable mask decoder after SAM, with the task embedding as the prompt.

    The task embedding becomes ``num_prompt_tokens`` sparse prompt tokens; after SAM2's output
    tokens (``object_score_token``, ``iou_token``, ``mask_tokens``) they run through a two-way
    transformer against the image embedding (a 1x1-conv projection of the patch grid plus 2-D
    sine positions). For video, the mask tokens of the ``T`` frames then attend to each other
    (light temporal attention). Two transposed convolutions upscale the image embedding 4x
    (adding projected 2x and 4x features when ``high_res_dims`` is set, as SAM2 does with its FPN
    levels, e.g. a timm encoder's ``features_only`` maps at strides 4 and 8 next to stride 16;
    they start as nearest-neighbour upsampling, ICNR); the mask is the dot product of each pixel
    with a hypernetwork MLP of the mask token. An MLP on the IoU token predicts the mask's IoU;
    one on the object-score token predicts whether the object is in the frame at all (SAM2's
    ``pred_obj_scores``), which referring video segmentation needs: the referred object is
    absent from many frames.

    Args:
        embed_dim: ``D``, size of the task embedding.
        image_dim: ``C``, channels of the image embedding.
        hidden_dim: transformer width (SAM: 256); divisible by 8.
        num_prompt_tokens: ``K`` sparse prompt tokens made from the task embedding.
        num_heads: attention heads.
        num_layers: two-way transformer blocks (SAM: 2).
        mlp_dim: MLP width inside the two-way blocks.
        attention_downsample_rate: inner width divisor of the token/image cross-attention (SAM: 2).
        head_depth: layers of the hypernetwork, IoU and object-score MLPs (SAM: 3).
        temporal_attention: attend across frames before decoding the masks.
        mask_loss: ``"focal"`` (SAM2: focal 20 + dice 1) or ``"bce"`` (LISA: BCE 2 + dice 0.5);
            ignored when ``criterion`` is given.
        criterion: the loss; default :class:`MaskCriterion` with ``mask_loss`` and IoU-MSE 1.
        high_res_dims: channels ``(C_4x, C_2x)`` of optional higher-resolution features at
            :attr:`high_res_scales` (4x and 2x) the image grid; ``None`` for the image embedding
            alone.

    Attributes:
        high_res_scales: :data:`HIGH_RES_SCALES`, the sizes of the ``high_res`` features relative
            to the image grid, in order.
    """

    high_res_scales: tuple[int, int] = HIGH_RES_SCALES

    def __init__(
        self,
        *,
        embed_dim: int,
        image_dim: int,
        hidden_dim: int = 256,
        num_prompt_tokens: int = 4,
        num_heads: int = 8,
        num_layers: int = 2,
        mlp_dim: int = 1024,
        attention_downsample_rate: int = 2,
        head_depth: int = DETR_MLP_LAYERS,
        temporal_attention: bool = True,
        mask_loss: Literal["focal", "bce"] = "focal",
        criterion: MaskCriterion | None = None,
        high_res_dims: tuple[int, int] | None = None,
    ):
        super().__init__()
        if hidden_dim % UPSCALE_DIVISORS[-1]:
            raise ValueError(f"hidden_dim: expected a multiple of {UPSCALE_DIVISORS[-1]}, got {hidden_dim}")
        self.embed_dim = embed_dim
        self.image_dim = image_dim
        self.hidden_dim = hidden_dim
        self.num_prompt_tokens = num_prompt_tokens
        self.prompt_proj = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_prompt_tokens * hidden_dim)
        )
        self.image_proj = nn.Sequential(nn.Conv2d(image_dim, hidden_dim, 1), _LayerNorm2d(hidden_dim))
        self.object_score_token = nn.Embedding(1, hidden_dim)
        self.iou_token = nn.Embedding(1, hidden_dim)
        self.mask_tokens = nn.Embedding(1, hidden_dim)  # one mask per frame (SAM's single-mask output)
        self.transformer = TwoWayTransformer(
            dim=hidden_dim,
            num_heads=num_heads,
            num_layers=num_layers,
            mlp_dim=mlp_dim,
            downsample=attention_downsample_rate,
        )
        self.temporal_attention = temporal_attention
        if temporal_attention:
            self.temporal_attn = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
            self.temporal_norm = nn.LayerNorm(hidden_dim)
        up_2x, up_4x = (hidden_dim // divisor for divisor in UPSCALE_DIVISORS)
        self.upscale_1 = nn.ConvTranspose2d(hidden_dim, up_2x, UPSCALE_FACTOR, stride=UPSCALE_FACTOR)
        self.upscale_norm = _LayerNorm2d(up_2x)
        self.upscale_2 = nn.ConvTranspose2d(up_2x, up_4x, UPSCALE_FACTOR, stride=UPSCALE_FACTOR)
        for upscale in (self.upscale_1, self.upscale_2):
            _init_as_nearest_upsampling(upscale)
        self.high_res_dims = high_res_dims
        if high_res_dims is not None:  # in the order of high_res_scales: 4x, then 2x
            self.high_res_proj = nn.ModuleList(
                (nn.Conv2d(high_res_dims[0], up_4x, 1), nn.Conv2d(high_res_dims[1], up_2x, 1))
            )
        self.hypernet = MLP(in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=up_4x, num_layers=head_depth)
        self.iou_head = MLP(in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=1, num_layers=head_depth)
        self.object_score_head = MLP(
            in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=1, num_layers=head_depth
        )
        self.criterion = criterion if criterion is not None else MaskCriterion(mask_loss=mask_loss)

    def forward(
        self, task_embeds: Tensor, image: Tensor, high_res: Sequence[Tensor] | None = None
    ) -> MaskOutput:
        """Decode one mask per frame.

        Args:
            task_embeds: ``(B, D)`` task embedding (LLM hidden state at the seg token).
            image: ``(B, T, C, h, w)`` image embedding per frame (e.g. the backbone's tokens
                reshaped to the patch grid, or a timm feature map).
            high_res: with ``high_res_dims`` set, ``(B, T, C_4x, 4h, 4w)`` and
                ``(B, T, C_2x, 2h, 2w)`` features (:attr:`high_res_scales`); otherwise ``None``.
        """
        sizes = check_shape(task_embeds, "task_embeds", ("B", "D"), {"D": (self.embed_dim, "embed_dim")})
        sizes.update(
            check_shape(
                image, "image", (sizes["B"], "T", "C", "h", "w"), {"C": (self.image_dim, "image_dim")}
            )
        )
        batch, length, height, width = sizes["B"], sizes["T"], sizes["h"], sizes["w"]
        skips = self._check_high_res(high_res, batch, length, height, width)
        dim = self.hidden_dim
        feats = self.image_proj(image.flatten(0, 1))  # (B T, d, h, w)
        image_tokens = feats.flatten(2).transpose(1, 2)
        image_pe = sine_position_2d(height, width, dim, image.device)
        prompts = self.prompt_proj(task_embeds).unflatten(-1, (self.num_prompt_tokens, dim))
        output_tokens = torch.cat(
            (self.object_score_token.weight, self.iou_token.weight, self.mask_tokens.weight)
        )
        tokens = torch.cat((output_tokens.expand(batch, -1, -1), prompts), dim=1)
        tokens = tokens.repeat_interleave(length, dim=0)
        tokens, image_tokens = self.transformer(tokens, image_tokens, image_pe)
        object_token, iou_token, mask_token = tokens[:, : len(output_tokens)].unbind(1)
        if self.temporal_attention and length > 1:
            seq = mask_token.unflatten(0, (batch, length))
            pos = seq + sine_position_1d(length, dim, image.device)
            seq = self.temporal_norm(seq + self.temporal_attn(pos, pos, seq, need_weights=False)[0])
            mask_token = seq.flatten(0, 1)
        upscaled = self._upscale(image_tokens.transpose(1, 2).reshape(-1, dim, height, width), skips)
        masks = torch.einsum("nc,nchw->nhw", self.hypernet(mask_token), upscaled)
        iou = self.iou_head(iou_token)[:, 0].sigmoid()
        object_logits = self.object_score_head(object_token)[:, 0]
        return MaskOutput(
            masks=masks.unflatten(0, (batch, length)),
            iou=iou.unflatten(0, (batch, length)),
            object_logits=object_logits.unflatten(0, (batch, length)),
        )

    def _check_high_res(
        self, high_res: Sequence[Tensor] | None, batch: int, length: int, height: int, width: int
    ) -> list[Tensor] | None:
        """``high_res`` flattened to ``(B T, C, H, W)`` after checking it against the config."""
        if self.high_res_dims is None:
            if high_res is not None:
                raise ValueError("high_res: given, but the head was built without high_res_dims")
            return None
        if high_res is None or len(high_res) != len(self.high_res_scales):
            raise ValueError("high_res: expected two tensors, (B, T, C_4x, 4h, 4w) and 2x")
        flat = []
        for i, (features, scale) in enumerate(zip(high_res, self.high_res_scales, strict=True)):
            expected = (batch, length, self.high_res_dims[i], scale * height, scale * width)
            check_shape(features, f"high_res[{i}]", expected)
            flat.append(features.flatten(0, 1))
        return flat

    def _upscale(self, x: Tensor, high_res: list[Tensor] | None) -> Tensor:
        """``(N, d, h, w)`` -> ``(N, d / 8, 4 h, 4 w)``, SAM2's upscaling with optional skips
        ``high_res`` (``(N, C_4x, 4h, 4w)``, ``(N, C_2x, 2h, 2w)``)."""
        x = self.upscale_1(x)
        if high_res is not None:
            x = x + self.high_res_proj[1](high_res[1])
        x = F.gelu(self.upscale_norm(x))
        x = self.upscale_2(x)
        if high_res is not None:
            x = x + self.high_res_proj[0](high_res[0])
        return F.gelu(x)

    def loss_counts(self, output: MaskOutput, targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The ``"masks"`` the mask terms count and all ``"frames"``."""
        return self.criterion.counts(targets["masks"], object_scores=output.object_logits is not None)

    def loss(
        self,
        output: MaskOutput,
        targets: Mapping[str, Tensor],
        *,
        normalizers: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted ``loss_mask``, ``loss_dice``, ``loss_iou`` (frames where the target is
        non-empty) and ``loss_class`` (object score) against ``targets["masks"]``; weights in
        :attr:`weight_dict`.

        Args:
            output: this head's forward output.
            targets: ``"masks"`` ``(B, T, H, W)`` bool. ``(H, W)`` may differ from the logits'
                size but must have the same aspect ratio; the logits are resized bilinearly.
            normalizers: the denominators of the terms' means over all processes
                (:mod:`tpo.losses.normalizers`); default this batch's :meth:`loss_counts`.
        """
        if not isinstance(targets, Mapping):
            raise ValueError(
                f"targets: expected a dict with 'masks' ((B, T, H, W) bool), got {type(targets).__name__}"
            )
        if "masks" not in targets:
            raise ValueError("targets: missing key 'masks' ((B, T, H, W) bool)")
        return mask_losses(self.criterion, output, targets["masks"], normalizers)

    @torch.no_grad()
    def postprocess(self, output: MaskOutput, meta: Sequence[Mapping[str, Any]]) -> list[MaskPrediction]:
        """Bool masks at ``meta[b]["image_size"]`` ``(height, width)`` pixels (bilinear resize
        of the logits, thresholded at :data:`~tpo.ops.masks.MASK_THRESHOLD`); scores are the
        predicted IoUs."""
        return postprocess_masks(output, meta)


def mask_losses(
    criterion: MaskCriterion,
    output: MaskOutput,
    target: Tensor,
    normalizers: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """``criterion`` on ``output.masks (B, T, h', w')`` resized to ``target (B, T, H, W)``
    (``normalizers`` as :mod:`tpo.losses.normalizers`).

    ``ValueError`` unless ``target`` has the batch and frame count of the output and the
    aspect ratio of its masks (``H * w' == W * h'``), and holds only 0 / 1 (bool) values.
    """
    batch, length, out_h, out_w = output.masks.shape
    sizes = check_shape(target, "targets['masks']", (batch, length, "H", "W"))
    if target.dtype != torch.bool:
        bad = (target != 0) & (target != 1)  # NaN included
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"targets['masks']: sample {index[0]}, frame {index[1]} holds {target[index].item()} at "
                f"pixel {index[2:]}; expected bool (or 0 / 1) masks"
            )
    if sizes["H"] * out_w != sizes["W"] * out_h:
        raise ValueError(
            f"targets['masks']: size {sizes['H']}x{sizes['W']} does not have the aspect ratio "
            f"of the predicted masks {out_h}x{out_w} (expected H * {out_w} == W * {out_h})"
        )
    logits = resize_mask_logits(output.masks.float(), (sizes["H"], sizes["W"]))
    target = target.to(logits.device)
    return criterion(logits, target, output.iou, output.object_logits, normalizers=normalizers)


@torch.no_grad()
def postprocess_masks(output: MaskOutput, meta: Sequence[Mapping[str, Any]]) -> list[MaskPrediction]:
    """Per sample, bool masks ``(T, H, W)`` at ``meta[b]["image_size"]`` and IoU scores; frames
    whose object score (when the output has one) is below
    :data:`~tpo.ops.masks.OBJECT_SCORE_THRESHOLD` are empty."""
    predictions = []
    for b in range(output.masks.shape[0]):
        size = meta_size(meta, b, "image_size")
        masks = resize_mask_logits(output.masks[b].detach().float(), size) > MASK_THRESHOLD
        if output.object_logits is not None:
            masks &= (output.object_logits[b].detach() >= OBJECT_SCORE_THRESHOLD)[:, None, None]
        predictions.append(
            MaskPrediction(masks=masks.cpu(), scores=output.iou[b].detach().float().cpu())
        )
    return predictions

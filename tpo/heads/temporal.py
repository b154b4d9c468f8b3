"""Temporal grounding head: a Moment-DETR style moment decoder driven by the task embedding."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tpo.heads.base import (
    DETR_MLP_LAYERS,
    MLP,
    CountedLoss,
    check_shape,
    grid_of,
    meta_value,
    sine_position_1d,
    sine_position_2d,
)
from tpo.losses.temporal import TemporalGroundingCriterion
from tpo.ops.spans import clip_centers, span_cxw_to_se, temporal_nms

__all__ = [
    "TemporalGroundingHead",
    "TemporalGroundingOutput",
    "TemporalGroundingPrediction",
    "clip_evidence_span",
]


@dataclass
class TemporalGroundingOutput:
    """Raw output of :class:`TemporalGroundingHead`.

    Attributes:
        spans: ``(B, Q, 2)`` normalised (center, width) of each moment query, last layer.
        logits: ``(B, Q)`` foreground logits, last layer.
        saliency: ``(B, T)`` per-clip saliency scores (meaningless where ``video_mask`` is False).
        video_mask: ``(B, T)`` bool, True for real clips.
        aux: per earlier decoder layer, ``(spans (B, Q, 2), logits (B, Q))``.
        clip_logits: ``(B, T)`` logit that each clip lies inside a queried moment, read from the
            pooled clip features before the encoder (``None`` for outputs built without it).
    """

    spans: Tensor
    logits: Tensor
    saliency: Tensor
    video_mask: Tensor
    aux: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    clip_logits: Tensor | None = None


def clip_evidence_span(clip_logits: Tensor, video_mask: Tensor) -> Tensor:
    """The span that per-clip evidence points at: its probability-weighted center and width.

    With ``p_t = sigmoid(clip_logits[t])`` on the valid clips (0 on padding) and ``x_t`` the
    normalised center of clip ``t`` among the ``L`` valid ones, the center is
    ``sum_t p_t x_t / sum_t p_t`` and the width ``sum_t p_t / L`` (clamped to 1): for a block of
    confident clips, exactly that block.

    Args:
        clip_logits: ``(B, T)`` per-clip logits.
        video_mask: ``(B, T)`` bool, True for real clips.

    Returns:
        ``(B, 2)`` normalised (center, width) in ``[0, 1]``.
    """
    mask = video_mask.to(clip_logits.dtype)
    probability = clip_logits.sigmoid() * mask
    length = mask.sum(1).clamp(min=1)
    position = clip_centers(video_mask).to(clip_logits.dtype)
    mass = probability.sum(1)
    center = (probability * position).sum(1) / mass.clamp(min=1e-6)
    width = (mass / length).clamp(max=1.0)
    return torch.stack((center, width), dim=1)


@dataclass
class TemporalGroundingPrediction:
    """Post-processed moments of one sample.

    Attributes:
        windows: ``(K, 3)`` ``[start_s, end_s, score]`` rows sorted by decreasing score
            (``windows.tolist()`` is QVHighlights' ``pred_relevant_windows``).
        saliency: ``(T_valid,)`` saliency score of each real clip.
    """

    windows: Tensor
    saliency: Tensor


class TemporalGroundingHead(CountedLoss, nn.Module):
    """Moment-DETR / CG-DETR style decoder with the task embedding as an extra encoder token.

    Input projections map clip features and the task embedding to ``hidden_dim``; a
    transformer encoder runs over ``[task; clips]`` with sine positions on the clips; learnable
    moment queries, shifted by the encoded task token, attend to the encoder memory in a
    transformer decoder. Every decoder layer predicts spans and foreground logits (auxiliary
    outputs for all but the last). Saliency is the scaled dot product of each encoded clip with
    the encoded task token.

    Before the encoder, a per-clip logit (``clip_logits``: the pooled clip feature against a
    projection of the task) says whether each clip belongs to the queried moment; the loss
    supervises it densely, like the per-patch terms of the box heads. Its detached
    :func:`clip_evidence_span` anchors every decoder layer: a layer's span is
    ``sigmoid(logit(anchor) + MLP(query))``, so the queries refine where the clips point
    instead of having to discover it from a constant start.

    Per-frame tokens ``(B, T, N, D_v)`` become one feature per clip by ``frame_pooling``:
    ``"mean"`` over the ``N`` tokens, or ``"attention"``: the projected task embedding attends to
    the frame's tokens (2-D sine positions on a square patch grid), so a clip's feature says
    whether *the queried* object is in it, which a mean over a frame of small objects cannot.

    Args:
        embed_dim: ``D``, size of the task embedding.
        video_dim: ``D_v``, size of the clip features.
        num_queries: ``Q`` moment queries (Moment-DETR: 10).
        hidden_dim: transformer width.
        num_heads: attention heads.
        num_encoder_layers: encoder depth.
        num_decoder_layers: decoder depth (auxiliary outputs for all but the last).
        dim_feedforward: feed-forward width.
        dropout: dropout in the transformer layers.
        nms_threshold: temporal IoU above which ``postprocess`` suppresses lower-scoring
            windows; ``None`` keeps all ``Q`` windows.
        frame_pooling: how per-frame tokens become clip features, ``"attention"`` or ``"mean"``.
        criterion: the loss; default :class:`TemporalGroundingCriterion` with paper weights and
            ``num_aux_layers = num_decoder_layers - 1``, which a given criterion must have too.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        video_dim: int,
        num_queries: int = 10,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 2,
        num_decoder_layers: int = 2,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        nms_threshold: float | None = None,
        frame_pooling: Literal["attention", "mean"] = "attention",
        criterion: TemporalGroundingCriterion | None = None,
    ):
        super().__init__()
        if frame_pooling not in ("attention", "mean"):
            raise ValueError(f"frame_pooling: expected 'attention' or 'mean', got {frame_pooling!r}")
        num_aux = num_decoder_layers - 1
        if criterion is None:
            criterion = TemporalGroundingCriterion(num_aux_layers=num_aux)
        if criterion.num_aux_layers != num_aux:
            raise ValueError(
                f"criterion: weighs {criterion.num_aux_layers} auxiliary decoder layers (num_aux_layers), "
                f"the head has {num_aux} (num_decoder_layers - 1)"
            )
        self.embed_dim = embed_dim
        self.video_dim = video_dim
        self.hidden_dim = hidden_dim
        self.nms_threshold = nms_threshold
        self.frame_pooling = frame_pooling
        if frame_pooling == "attention":
            self.frame_attn = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
            self.frame_norm = nn.LayerNorm(hidden_dim)
        self.video_proj = nn.Sequential(nn.LayerNorm(video_dim), nn.Linear(video_dim, hidden_dim))
        self.task_proj = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden_dim))
        self.task_type = nn.Parameter(torch.zeros(hidden_dim))
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(
                hidden_dim, num_heads, dim_feedforward, dropout, batch_first=True, norm_first=True
            ),
            num_encoder_layers,
            enable_nested_tensor=False,
        )
        self.encoder_norm = nn.LayerNorm(hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.decoder_layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                hidden_dim, num_heads, dim_feedforward, dropout, batch_first=True, norm_first=True
            )
            for _ in range(num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_head = nn.Linear(hidden_dim, 1)
        self.span_head = MLP(in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=2, num_layers=DETR_MLP_LAYERS)
        self.saliency_clip = nn.Linear(hidden_dim, hidden_dim)
        self.saliency_task = nn.Linear(hidden_dim, hidden_dim)
        self.clip_query = nn.Linear(hidden_dim, hidden_dim)
        self.criterion = criterion

    def forward(
        self,
        task_embeds: Tensor,
        video: Tensor,
        video_mask: Tensor | None = None,
        grid_size: tuple[int, int] | None = None,
    ) -> TemporalGroundingOutput:
        """Predict moments.

        Args:
            task_embeds: ``(B, D)`` task embedding (LLM hidden state at the temporal token).
            video: ``(B, T, D_v)`` per-clip features, or ``(B, T, N, D_v)`` per-frame tokens
                (row-major over the patch grid), pooled by ``frame_pooling``.
            video_mask: ``(B, T)`` bool, True for real clips; default all True.
            grid_size: ``(h, w)`` patch grid of per-frame tokens; default a square grid.

        Returns:
            :class:`TemporalGroundingOutput`.
        """
        sizes = check_shape(task_embeds, "task_embeds", ("B", "D"), {"D": (self.embed_dim, "embed_dim")})
        video_width = {"D_v": (self.video_dim, "video_dim")}
        if isinstance(video, Tensor) and video.ndim == 4:
            check_shape(video, "video", (sizes["B"], "T", "N", "D_v"), video_width)
        else:
            check_shape(video, "video", (sizes["B"], "T", "D_v"), video_width)
        sizes["T"] = video.shape[1]
        if video_mask is None:
            video_mask = torch.ones(video.shape[:2], dtype=torch.bool, device=video.device)
        check_shape(video_mask, "video_mask", (sizes["B"], sizes["T"]))
        video_mask = video_mask.bool()
        empty = ~video_mask.any(1)
        if empty.any():
            raise ValueError(f"video_mask: sample {int(empty.nonzero()[0])} has no valid clip")

        length = video.shape[1]
        task = self.task_proj(task_embeds) + self.task_type
        clips = self._clip_features(video, task, grid_size)
        clip_logits = (clips * self.clip_query(task)[:, None]).sum(-1) / math.sqrt(self.hidden_dim)
        anchor = torch.logit(clip_evidence_span(clip_logits.detach().float(), video_mask), eps=1e-3)
        anchor = anchor.to(clips.dtype)[:, None]
        clips = clips + sine_position_1d(length, self.hidden_dim, video.device)
        src = torch.cat((task[:, None], clips), dim=1)
        padding = torch.cat((torch.zeros_like(video_mask[:, :1]), ~video_mask), dim=1)
        memory = self.encoder_norm(self.encoder(src, src_key_padding_mask=padding))
        task_out, clips_out = memory[:, 0], memory[:, 1:]
        saliency = (self.saliency_clip(clips_out) * self.saliency_task(task_out)[:, None]).sum(-1)
        saliency = saliency / math.sqrt(self.hidden_dim)

        hidden = self.query_embed.weight[None] + task_out[:, None]
        per_layer = []
        for layer in self.decoder_layers:
            hidden = layer(hidden, memory, memory_key_padding_mask=padding)
            normed = self.decoder_norm(hidden)
            spans = (anchor + self.span_head(normed)).sigmoid()
            per_layer.append((spans, self.class_head(normed)[..., 0]))
        spans, logits = per_layer[-1]
        return TemporalGroundingOutput(
            spans=spans,
            logits=logits,
            saliency=saliency,
            video_mask=video_mask,
            aux=per_layer[:-1],
            clip_logits=clip_logits,
        )

    def _clip_features(self, video: Tensor, task: Tensor, grid_size: tuple[int, int] | None) -> Tensor:
        """``video (B, T, D_v)`` or ``(B, T, N, D_v)``, projected ``task (B, d)`` -> ``(B, T, d)``."""
        if video.ndim == 3:
            return self.video_proj(video)
        if self.frame_pooling == "mean":
            return self.video_proj(video.mean(2))
        batch, length, num_tokens = video.shape[:3]
        height, width = grid_of(num_tokens, grid_size, "video")
        tokens = self.video_proj(video).flatten(0, 1)  # (B T, N, d)
        keys = tokens + sine_position_2d(height, width, self.hidden_dim, video.device)
        query = task.repeat_interleave(length, dim=0)[:, None]  # (B T, 1, d)
        pooled = self.frame_attn(query, keys, tokens, need_weights=False)[0][:, 0]
        return self.frame_norm(pooled + tokens.mean(1)).unflatten(0, (batch, length))

    def loss_counts(
        self, output: TemporalGroundingOutput, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Matched ``"spans"``, label weights of the ``"queries"``, samples with ``"saliency"``
        pairs and valid ``"clips"``: what the terms average over."""
        return self.criterion.counts(output, targets)

    def loss(
        self,
        output: TemporalGroundingOutput,
        targets: list[dict[str, Tensor]],
        *,
        normalizers: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Named, unweighted loss terms (weights in :attr:`weight_dict`, auxiliary layers'
        included); see :class:`TemporalGroundingCriterion`.

        Args:
            output: this head's forward output.
            targets: ``B`` dicts, ``"spans"`` ``(n_b, 2)`` normalised (center, width) (``n_b``
                may be 0), optional ``"saliency"`` ``(T,)`` (higher = more relevant).
            normalizers: the denominators of the terms' means over all processes
                (:mod:`tpo.losses.normalizers`); default this batch's :meth:`loss_counts`.

        Raises:
            ValueError: naming ``targets[b][key]`` for a span outside [0, 1], with start > end or
                NaN, a saliency of another length than the ``T`` clips or NaN, a missing key.
        """
        return self.criterion(output, targets, normalizers=normalizers)

    @torch.no_grad()
    def postprocess(
        self, output: TemporalGroundingOutput, meta: Sequence[Mapping[str, Any]]
    ) -> list[TemporalGroundingPrediction]:
        """Windows in seconds, clamped to ``[0, duration]``, sorted by foreground probability.

        Args:
            output: this head's forward output.
            meta: ``B`` dicts with ``"duration"``: the clip length in seconds.

        Returns:
            ``B`` :class:`TemporalGroundingPrediction`; with ``nms_threshold`` set, windows
            overlapping a better one by more than that temporal IoU are dropped.
        """
        predictions = []
        for b in range(output.spans.shape[0]):
            value = meta_value(meta, b, "duration")
            try:
                duration = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"meta[{b}]['duration']: expected seconds > 0, got {value!r}") from None
            if not (duration > 0 and math.isfinite(duration)):
                raise ValueError(f"meta[{b}]['duration']: expected > 0 seconds, got {duration}")
            seconds = (span_cxw_to_se(output.spans[b].detach().float()) * duration).clamp(
                0, duration
            )
            scores = output.logits[b].detach().float().sigmoid()
            if self.nms_threshold is not None:
                keep = temporal_nms(seconds, scores, self.nms_threshold)
            else:
                keep = scores.argsort(descending=True, stable=True)
            windows = torch.cat((seconds[keep], scores[keep, None]), dim=1).cpu()
            saliency = output.saliency[b].detach()[output.video_mask[b]].float().cpu()
            predictions.append(TemporalGroundingPrediction(windows=windows, saliency=saliency))
        return predictions

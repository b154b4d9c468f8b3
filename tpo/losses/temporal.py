"""Set criterion of the temporal grounding head (Moment-DETR losses)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.losses.normalizers import Normalizers, normalizer
from tpo.ops.matcher import HungarianMatcher
from tpo.ops.spans import check_normalized_spans, clip_centers, generalized_temporal_iou, span_cxw_to_se

__all__ = ["TemporalGroundingCriterion", "saliency_from_spans"]


class _SpanOutput(Protocol):
    spans: Tensor
    logits: Tensor
    saliency: Tensor
    video_mask: Tensor
    aux: list[tuple[Tensor, Tensor]]
    clip_logits: Tensor | None


def saliency_from_spans(spans: Tensor, valid: Tensor) -> Tensor:
    """Binary per-clip saliency from ground-truth windows.

    Args:
        spans: ``(n, 2)`` normalised (center, width) windows.
        valid: ``(T,)`` bool, the clips that exist; the clip is divided evenly among them.

    Returns:
        ``(T,)`` float: 1 where the valid clip's center lies inside a window, else 0 (also for
        padded clips, which the loss ignores anyway).
    """
    centers = clip_centers(valid)
    se = span_cxw_to_se(spans.float().to(valid.device))
    inside = (centers[:, None] >= se[None, :, 0]) & (centers[:, None] <= se[None, :, 1])
    return (inside.any(-1) & valid).float()


class TemporalGroundingCriterion(nn.Module):
    """Moment-DETR's set criterion for spans, logits and per-clip saliency.

    Terms (unweighted; ``weight_dict`` holds the weights, suffix ``_{i}`` for the auxiliary
    output of decoder layer ``i``, ``num_aux_layers`` of them):

    - ``loss_span``: L1 of matched normalised (center, width), mean over matched coordinates.
    - ``loss_giou``: ``1 - GIoU`` of matched spans, mean over matched spans.
    - ``loss_label``: foreground BCE on every query, matched queries target 1, the others 0
      with weight ``eos_coef`` and the sum normalised by the total weight. This equals
      Moment-DETR's two-class cross-entropy with ``empty_weight = [1, eos_coef]`` when the
      logit is the foreground-minus-background difference.
    - ``loss_saliency``: hinge ranking loss ``max(0, margin - (s_i - s_j))`` over all pairs of
      valid clips whose target saliency satisfies ``y_i > y_j``, mean over pairs, then over
      samples that have pairs. Targets come from ``"saliency"`` or, when absent, from the
      windows (clips whose center lies in a window are 1, others 0).
    - ``loss_clip``: dense BCE of the head's ``clip_logits (B, T)`` against the window targets
      of :func:`saliency_from_spans` (clip inside a window or not), mean over all valid
      ``"clips"`` of the batch, samples without windows included (all clips 0). Not in
      Moment-DETR: it gives the head's frame pooling a per-clip signal from the first step, as
      the box heads' per-patch terms do.

    A sample with no windows contributes only to ``loss_label`` (all queries background); with
    no window in the batch the span terms are 0, still in the graph of the spans. The means are
    over the items of ``count_keys`` (:mod:`tpo.losses.normalizers`). ``weight_saliency=0``
    leaves ``loss_saliency`` out, ``weight_clip=0`` ``loss_clip`` (as does an output without
    ``clip_logits``).

    ``num_aux_layers``: the decoder layers before the last whose outputs (``output.aux``) are
    supervised too (DETR's auxiliary losses); their terms take the last layer's weights.
    """

    count_keys = ("spans", "queries", "saliency", "clips")

    def __init__(
        self,
        *,
        matcher: HungarianMatcher | None = None,
        weight_span: float = 10.0,
        weight_giou: float = 1.0,
        weight_label: float = 4.0,
        eos_coef: float = 0.1,
        weight_saliency: float = 1.0,
        saliency_margin: float = 0.2,
        weight_clip: float = 1.0,
        num_aux_layers: int = 0,
    ):
        super().__init__()
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.eos_coef = eos_coef
        self.saliency_margin = saliency_margin
        self.num_aux_layers = num_aux_layers
        set_weights = {"loss_span": weight_span, "loss_giou": weight_giou, "loss_label": weight_label}
        self.weight_dict = dict(set_weights)
        for layer in range(num_aux_layers):
            self.weight_dict.update({f"{name}_{layer}": w for name, w in set_weights.items()})
        self.weight_dict["loss_saliency"] = weight_saliency
        self.weight_dict["loss_clip"] = weight_clip

    @staticmethod
    def check_targets(targets: list[dict[str, Tensor]], video_mask: Tensor) -> None:
        """Raise ``ValueError`` naming ``targets[b][key]`` when a target is malformed."""
        batch, length = video_mask.shape
        if not isinstance(targets, (list, tuple)):
            raise ValueError(f"targets: expected a list of {batch} dicts, got {type(targets).__name__}")
        if len(targets) != batch:
            raise ValueError(f"targets: expected {batch} dicts, got {len(targets)}")
        for b, target in enumerate(targets):
            if not isinstance(target, Mapping):
                raise ValueError(
                    f"targets[{b}]: expected a dict with 'spans' ((n, 2) center, width), "
                    f"got {type(target).__name__}"
                )
            if "spans" not in target:
                raise ValueError(f"targets[{b}]: missing key 'spans' ((n, 2) center, width)")
            spans = target["spans"]
            if not isinstance(spans, Tensor):
                raise ValueError(
                    f"targets[{b}]['spans']: expected a (n, 2) tensor, got {type(spans).__name__}"
                )
            if spans.ndim == 2 and spans.shape[-1] == 2 and not bool(torch.isfinite(spans).all()):
                row = int((~torch.isfinite(spans)).any(-1).nonzero()[0, 0])
                raise ValueError(
                    f"targets[{b}]['spans']: span {row} is {spans[row].tolist()}; expected finite "
                    "normalised (center, width) in [0, 1]"
                )
            check_normalized_spans(spans, f"targets[{b}]['spans']")
            saliency = target.get("saliency")
            if saliency is not None and tuple(saliency.shape) != (length,):
                raise ValueError(
                    f"targets[{b}]['saliency']: expected shape ({length},), "
                    f"got {tuple(saliency.shape)}"
                )
            if saliency is not None and not bool(torch.isfinite(saliency).all()):
                clip = int((~torch.isfinite(saliency)).nonzero()[0, 0])
                raise ValueError(
                    f"targets[{b}]['saliency']: clip {clip} is {saliency[clip].item()}; "
                    "expected finite scores"
                )

    def _set_losses(
        self,
        logits: Tensor,
        spans: Tensor,
        targets: list[dict[str, Tensor]],
        suffix: str,
        normalizers: Normalizers | None,
    ) -> dict[str, Tensor]:
        matches = self.matcher(logits, spans, targets)
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)])
        query_idx = torch.cat([q for q, _ in matches])
        matched = spans[batch_idx.to(spans.device), query_idx.to(spans.device)].float()
        pairs = zip(targets, matches, strict=True)
        target_spans = torch.cat([t["spans"][j.to(t["spans"].device)] for t, (_, j) in pairs])
        target_spans = target_spans.to(matched)

        num_spans = normalizer(normalizers, "spans", matched.new_tensor(float(len(query_idx))))
        loss_span = (matched - target_spans).abs().sum() / (num_spans * matched.shape[-1])
        giou = generalized_temporal_iou(span_cxw_to_se(matched), span_cxw_to_se(target_spans))
        loss_giou = (1 - giou.diagonal()).sum() / num_spans

        labels = torch.zeros_like(logits, dtype=torch.float32)
        labels[batch_idx, query_idx] = 1.0
        weights = torch.where(labels > 0, 1.0, self.eos_coef)
        per_query = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
        loss_label = (per_query * weights).sum() / normalizer(normalizers, "queries", weights.sum())
        terms = {"loss_span": loss_span, "loss_giou": loss_giou, "loss_label": loss_label}
        return {f"{name}{suffix}": value for name, value in terms.items()}

    @staticmethod
    def _saliency_pairs(video_mask: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """``(B, T, T)`` bool: the clip pairs ``(i, j)`` of each sample with ``y_i > y_j``."""
        target = torch.stack(
            [
                t["saliency"].float().to(video_mask.device)
                if t.get("saliency") is not None
                else saliency_from_spans(t["spans"], video_mask[b])
                for b, t in enumerate(targets)
            ]
        )
        valid = video_mask[:, :, None] & video_mask[:, None, :]
        return valid & (target[:, :, None] > target[:, None, :])

    def saliency_loss(
        self,
        saliency: Tensor,
        video_mask: Tensor,
        targets: list[dict[str, Tensor]],
        normalizers: Normalizers | None = None,
    ) -> Tensor:
        """Pairwise margin loss of ``saliency (B, T)`` scores; see the class docstring."""
        pairs = self._saliency_pairs(video_mask, targets)
        scores = saliency.float()
        hinge = (self.saliency_margin - (scores[:, :, None] - scores[:, None, :])).clamp(min=0)
        num_pairs = pairs.sum((1, 2))
        has_pairs = num_pairs > 0
        per_sample = (hinge * pairs).sum((1, 2)) / num_pairs.clamp(min=1)
        num = normalizer(normalizers, "saliency", has_pairs.sum().float())
        return torch.where(has_pairs, per_sample, 0.0).sum() / num

    def clip_loss(
        self,
        clip_logits: Tensor,
        video_mask: Tensor,
        targets: list[dict[str, Tensor]],
        normalizers: Normalizers | None = None,
    ) -> Tensor:
        """BCE of ``clip_logits (B, T)`` against the windows' clip targets, mean over valid clips."""
        labels = torch.stack([saliency_from_spans(t["spans"], video_mask[b]) for b, t in enumerate(targets)])
        per_clip = F.binary_cross_entropy_with_logits(clip_logits.float(), labels, reduction="none")
        num = normalizer(normalizers, "clips", video_mask.sum().float())
        return (per_clip * video_mask).sum() / num

    def counts(self, output: _SpanOutput, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The items the terms average over (:mod:`tpo.losses.normalizers`): matched ``"spans"``
        (``min(Q, n_b)`` per sample, the same in every decoder layer), the label weights of all
        ``"queries"``, the samples with ``"saliency"`` pairs and the valid ``"clips"``."""
        self.check_targets(targets, output.video_mask)
        batch, queries = output.logits.shape
        matched = float(sum(min(queries, len(t["spans"])) for t in targets))
        device = output.logits.device
        has_pairs = self._saliency_pairs(output.video_mask, targets).flatten(1).any(1)
        return {
            "spans": torch.tensor(matched, device=device),
            "queries": torch.tensor(matched + self.eos_coef * (batch * queries - matched), device=device),
            "saliency": has_pairs.sum().float(),
            "clips": output.video_mask.sum().float(),
        }

    def forward(
        self,
        output: _SpanOutput,
        targets: list[dict[str, Tensor]],
        *,
        normalizers: Normalizers | None = None,
    ) -> dict[str, Tensor]:
        """Named, unweighted loss terms.

        Args:
            output: a ``TemporalGroundingOutput`` with ``spans (B, Q, 2)``, ``logits (B, Q)``,
                ``saliency (B, T)``, ``video_mask (B, T)``, ``aux`` (``num_aux_layers``
                entries) and optionally ``clip_logits (B, T)``.
            targets: ``B`` dicts, ``"spans"`` ``(n_b, 2)`` normalised (center, width),
                optional ``"saliency"`` ``(T,)``.
            normalizers: ``{"spans", "queries", "saliency", "clips"}`` over all processes (default this
                batch's :meth:`counts`).
        """
        self.check_targets(targets, output.video_mask)
        if len(output.aux) != self.num_aux_layers:
            raise ValueError(
                f"output.aux: {len(output.aux)} auxiliary decoder outputs, the criterion weighs "
                f"{self.num_aux_layers} (num_aux_layers)"
            )
        losses = self._set_losses(output.logits, output.spans, targets, "", normalizers)
        for layer, (aux_spans, aux_logits) in enumerate(output.aux):
            losses.update(self._set_losses(aux_logits, aux_spans, targets, f"_{layer}", normalizers))
        if self.weight_dict["loss_saliency"]:
            losses["loss_saliency"] = self.saliency_loss(
                output.saliency, output.video_mask, targets, normalizers
            )
        if self.weight_dict["loss_clip"] and output.clip_logits is not None:
            losses["loss_clip"] = self.clip_loss(output.clip_logits, output.video_mask, targets, normalizers)
        return losses

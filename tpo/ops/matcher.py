"""Bipartite matching between predicted moment queries and ground-truth spans (Moment-DETR)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from tpo.ops.spans import generalized_temporal_iou, span_cxw_to_se

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of ``Q`` predictions to ``n_b`` targets per sample (DETR).

    The cost of predicting target ``j`` with query ``i`` is
    ``cost_span * L1(span_i, span_j) - cost_giou * GIoU(span_i, span_j) - cost_class * p_i``,
    with spans in normalised (center, width) for L1 and (start, end) for GIoU and ``p_i`` the
    foreground probability, as in Moment-DETR (defaults 10 / 1 / 4). The minimum-cost
    assignment is found by ``scipy.optimize.linear_sum_assignment``.
    """

    def __init__(self, *, cost_class: float = 4.0, cost_span: float = 10.0, cost_giou: float = 1.0):
        super().__init__()
        if cost_class == 0 and cost_span == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_span = cost_span
        self.cost_giou = cost_giou

    def cost_matrix(self, logits: Tensor, spans: Tensor, target_spans: Tensor) -> Tensor:
        """Matching cost of one sample.

        Args:
            logits: ``(Q,)`` foreground logits.
            spans: ``(Q, 2)`` predicted normalised (center, width).
            target_spans: ``(n, 2)`` target normalised (center, width).

        Returns:
            ``(Q, n)`` cost.
        """
        prob = logits.float().sigmoid()
        spans = spans.float()
        target_spans = target_spans.float().to(spans.device)
        cost_span = torch.cdist(spans, target_spans, p=1)
        cost_giou = -generalized_temporal_iou(span_cxw_to_se(spans), span_cxw_to_se(target_spans))
        cost_class = -prob[:, None].expand(-1, target_spans.shape[0])
        return (
            self.cost_span * cost_span + self.cost_giou * cost_giou + self.cost_class * cost_class
        )

    @torch.no_grad()
    def forward(
        self, logits: Tensor, spans: Tensor, targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match every sample.

        Args:
            logits: ``(B, Q)`` foreground logits.
            spans: ``(B, Q, 2)`` predicted normalised (center, width).
            targets: ``B`` dicts with ``"spans"`` ``(n_b, 2)`` normalised (center, width);
                ``n_b`` may be 0.

        Returns:
            ``B`` pairs ``(query_idx (k,), target_idx (k,))`` of int64, ``k = min(Q, n_b)``,
            ordered by target index.
        """
        if len(targets) != logits.shape[0]:
            raise ValueError(f"targets: expected {logits.shape[0]} dicts, got {len(targets)}")
        matches = []
        for b, target in enumerate(targets):
            target_spans = target["spans"]
            if target_spans.shape[0] == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                matches.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(logits[b], spans[b], target_spans).cpu()
            if not torch.isfinite(cost).all():
                raise ValueError(f"HungarianMatcher: non-finite matching cost in sample {b}")
            rows, cols = linear_sum_assignment(cost.numpy())
            order = cols.argsort()
            matches.append(
                (
                    torch.as_tensor(rows[order], dtype=torch.int64),
                    torch.as_tensor(cols[order], dtype=torch.int64),
                )
            )
        return matches

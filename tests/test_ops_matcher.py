"""HungarianMatcher: optimal against brute force, variable target counts, cost terms."""

from __future__ import annotations

import itertools

import pytest
import torch

from tpo.ops.matcher import HungarianMatcher


def _slow_cost(logit, span, target, matcher):
    """One cost entry with plain Python arithmetic."""
    p = 1 / (1 + torch.exp(-logit)).item()
    (c1, w1), (c2, w2) = span.tolist(), target.tolist()
    s1, e1, s2, e2 = c1 - w1 / 2, c1 + w1 / 2, c2 - w2 / 2, c2 + w2 / 2
    inter = max(0.0, min(e1, e2) - max(s1, s2))
    union = (e1 - s1) + (e2 - s2) - inter
    hull = max(e1, e2) - min(s1, s2)
    giou = inter / union - (hull - union) / hull
    l1 = abs(c1 - c2) + abs(w1 - w2)
    return matcher.cost_span * l1 - matcher.cost_giou * giou - matcher.cost_class * p


@pytest.mark.parametrize("seed", range(6))
def test_optimal_against_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    num_queries = 5
    counts = [0, 1, 3, 5]
    logits = torch.randn(len(counts), num_queries, generator=generator)
    centers = torch.rand(len(counts), num_queries, 1, generator=generator) * 0.6 + 0.2
    widths = torch.rand(len(counts), num_queries, 1, generator=generator) * 0.3 + 0.05
    spans = torch.cat((centers, widths), -1)
    targets = [
        {
            "spans": torch.cat(
                (
                    torch.rand(n, 1, generator=generator) * 0.6 + 0.2,
                    torch.rand(n, 1, generator=generator) * 0.3 + 0.05,
                ),
                -1,
            )
        }
        for n in counts
    ]
    matcher = HungarianMatcher()
    matches = matcher(logits, spans, targets)
    for b, n in enumerate(counts):
        rows, cols = matches[b]
        assert len(rows) == len(cols) == n
        assert cols.tolist() == list(range(n))
        assert len(set(rows.tolist())) == n
        cost = [
            [_slow_cost(logits[b, q], spans[b, q], targets[b]["spans"][j], matcher) for j in range(n)]
            for q in range(num_queries)
        ]
        got = sum(cost[q][j] for q, j in zip(rows.tolist(), cols.tolist(), strict=True))
        best = min(
            (
                sum(cost[q][j] for j, q in enumerate(perm))
                for perm in itertools.permutations(range(num_queries), n)
            ),
            default=0.0,
        )
        assert got == pytest.approx(best, abs=1e-5)


def test_cost_matrix_matches_slow_reference():
    logits = torch.tensor([0.3, -1.0])
    spans = torch.tensor([[0.5, 0.2], [0.2, 0.1]])
    target = torch.tensor([[0.45, 0.3], [0.8, 0.1], [0.2, 0.1]])
    matcher = HungarianMatcher(cost_class=2.0, cost_span=3.0, cost_giou=5.0)
    got = matcher.cost_matrix(logits, spans, target)
    for q in range(2):
        for j in range(3):
            slow = _slow_cost(logits[q], spans[q], target[j], matcher)
            assert got[q, j].item() == pytest.approx(slow, abs=1e-5)


def test_class_cost_prefers_confident_query():
    spans = torch.tensor([[[0.5, 0.2], [0.5, 0.2]]])
    logits = torch.tensor([[-3.0, 3.0]])
    ((rows, _),) = HungarianMatcher()(logits, spans, [{"spans": torch.tensor([[0.5, 0.2]])}])
    assert rows.tolist() == [1]

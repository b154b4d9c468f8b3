"""tpo.ops.spans: hand-computed values, properties, temporal NMS and target checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tpo.ops.spans import (
    check_normalized_spans,
    generalized_temporal_iou,
    span_cxw_to_se,
    span_se_to_cxw,
    temporal_iou,
    temporal_nms,
)

span_st = st.tuples(st.floats(0, 1), st.floats(0, 1)).map(lambda p: (min(p), max(p)))
spans_st = st.lists(span_st, min_size=1, max_size=6).map(lambda rows: torch.tensor(rows, dtype=torch.float64))


def test_conversions_hand_computed():
    cxw = torch.tensor([[0.5, 0.2], [0.1, 0.2]])
    se = torch.tensor([[0.4, 0.6], [0.0, 0.2]])
    torch.testing.assert_close(span_cxw_to_se(cxw), se)
    torch.testing.assert_close(span_se_to_cxw(se), cxw)


def test_iou_and_giou_hand_computed():
    a = torch.tensor([[0.0, 2.0]])
    b = torch.tensor([[1.0, 3.0], [4.0, 5.0], [0.0, 2.0]])
    torch.testing.assert_close(temporal_iou(a, b), torch.tensor([[1 / 3, 0.0, 1.0]]))
    # disjoint [0,2] and [4,5]: union 3, hull 5 -> 0 - (5 - 3) / 5
    torch.testing.assert_close(generalized_temporal_iou(a, b), torch.tensor([[1 / 3, -0.4, 1.0]]))


@settings(max_examples=50, deadline=None)
@given(spans_st, spans_st)
def test_iou_properties(a, b):
    iou = temporal_iou(a, b)
    giou = generalized_temporal_iou(a, b)
    torch.testing.assert_close(iou, temporal_iou(b, a).T)
    assert ((iou >= 0) & (iou <= 1 + 1e-9)).all()
    assert (giou <= iou + 1e-9).all() and (giou >= -1 - 1e-9).all()
    torch.testing.assert_close(span_cxw_to_se(span_se_to_cxw(a)), a)


def test_temporal_nms_hand_computed():
    spans = torch.tensor([[0.0, 10.0], [1.0, 10.0], [20.0, 30.0], [0.0, 5.0]])
    scores = torch.tensor([0.9, 0.95, 0.5, 0.8])
    # [1,10] wins; [0,10] overlaps it by 0.9 -> dropped; [0,5] overlaps [1,10] by 4/10 -> kept
    assert temporal_nms(spans, scores, 0.5).tolist() == [1, 3, 2]
    assert temporal_nms(spans, scores, 0.95).tolist() == [1, 0, 3, 2]


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        (torch.tensor([[0.5, 0.2], [0.5, -0.1]]), "span 1 has start"),
        (torch.tensor([[0.95, 0.2]]), "outside"),
        (torch.tensor([0.5, 0.2]), "expected \\(n, 2\\)"),
    ],
)
def test_check_normalized_spans_rejects(spans, message):
    with pytest.raises(ValueError, match=message) as info:
        check_normalized_spans(spans, "targets[3]['spans']")
    assert "targets[3]['spans']" in str(info.value)

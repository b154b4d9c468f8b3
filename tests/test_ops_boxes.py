"""tpo.ops.boxes: conversions, element-wise IoU/GIoU, pixel conversion, target checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tpo.ops.boxes import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_iou_elementwise,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    boxes_to_pixels,
    check_normalized_boxes,
    generalized_box_iou,
    generalized_box_iou_elementwise,
)


def _xyxy(draw_pair):
    (x1, x2), (y1, y2) = draw_pair
    return [min(x1, x2), min(y1, y2), max(x1, x2) + 1e-3, max(y1, y2) + 1e-3]


box_st = st.tuples(
    st.tuples(st.floats(0, 1), st.floats(0, 1)), st.tuples(st.floats(0, 1), st.floats(0, 1))
).map(_xyxy)
boxes_st = st.lists(box_st, min_size=1, max_size=5).map(lambda rows: torch.tensor(rows, dtype=torch.float64))


def test_conversions_hand_computed():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    xyxy = torch.tensor([[0.4, 0.3, 0.6, 0.7]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), xyxy)
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    torch.testing.assert_close(box_xyxy_to_xywh(xyxy), torch.tensor([[0.4, 0.3, 0.2, 0.4]]))
    torch.testing.assert_close(box_xywh_to_xyxy(torch.tensor([[0.4, 0.3, 0.2, 0.4]])), xyxy)


def test_elementwise_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]])
    torch.testing.assert_close(box_iou_elementwise(a, b), torch.tensor([1 / 7, 0.0]))
    # hulls: 3x3 = 9 with union 7; 3x1 = 3 with union 2
    torch.testing.assert_close(generalized_box_iou_elementwise(a, b), torch.tensor([1 / 7 - 2 / 9, -1 / 3]))


@settings(max_examples=50, deadline=None)
@given(boxes_st, boxes_st)
def test_elementwise_matches_pairwise_and_properties(a, b):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    iou = box_iou_elementwise(a, b)
    giou = generalized_box_iou_elementwise(a, b)
    torch.testing.assert_close(iou, box_iou(a, b).diagonal())
    torch.testing.assert_close(giou, generalized_box_iou(a, b).diagonal())
    torch.testing.assert_close(iou, box_iou_elementwise(b, a))
    assert ((iou >= 0) & (iou <= 1 + 1e-9)).all() and (giou <= iou + 1e-9).all()
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(a)), a)


def test_boxes_to_pixels_hand_computed():
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.05, 0.5, 0.2, 0.2]])
    xyxy = boxes_to_pixels(boxes, (100, 200))
    torch.testing.assert_close(xyxy, torch.tensor([[50.0, 25.0, 150.0, 75.0], [0.0, 40.0, 30.0, 60.0]]))
    xywh = boxes_to_pixels(boxes, (100, 200), fmt="xywh")
    torch.testing.assert_close(xywh[0], torch.tensor([50.0, 25.0, 100.0, 50.0]))


def test_check_normalized_boxes():
    good = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]])
    check_normalized_boxes(good, "targets['boxes']")
    bad = good.clone()
    bad[1, 2] = 0.0
    with pytest.raises(ValueError, match=r"targets\['boxes'\]: box at sample 1"):
        check_normalized_boxes(bad, "targets['boxes']")
    outside = good.clone()
    outside[0, 0] = 0.95
    with pytest.raises(ValueError, match="sample 0"):
        check_normalized_boxes(outside, "targets['boxes']")
    # boxes flagged invalid are not checked
    check_normalized_boxes(bad, "targets['boxes']", valid=torch.tensor([True, False]))


def test_patch_targets_weigh_each_patch_by_the_box_area_it_covers():
    from tpo.ops.boxes import patch_centers, patch_targets

    centers = patch_centers(2, 4)
    assert torch.allclose(centers[:4, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    assert torch.allclose(centers[4:, 1], torch.full((4,), 0.75))
    # a box over the two left patches of the top row (centres x=0.125, 0.375; y=0.25)
    target = patch_targets(torch.tensor([[0.25, 0.25, 0.5, 0.5]]), (2, 4))
    assert torch.allclose(target, torch.tensor([[0.5, 0.5, 0, 0, 0, 0, 0, 0]]))
    # x in [0.165, 0.435] covers 0.085 of column 0 and 0.185 of column 1; y in [0.435, 0.765]
    # covers 0.065 of row 0 and 0.265 of row 1; the box's area is 0.27 * 0.33
    target = patch_targets(torch.tensor([[0.3, 0.6, 0.27, 0.33]]), (2, 4))
    expected = torch.zeros(2, 4)
    expected[:, :2] = torch.tensor([[0.065], [0.265]]) * torch.tensor([0.085, 0.185]) / (0.27 * 0.33)
    torch.testing.assert_close(target, expected.flatten()[None])
    # a small box lies inside one patch; a degenerate one falls back to the patch of its centre
    target = patch_targets(torch.tensor([[0.9, 0.9, 0.01, 0.01], [0.1, 0.9, 0.0, 0.2]]), (2, 4))
    assert target[0, 7] == 1 and target[1, 4] == 1 and torch.allclose(target.sum(-1), torch.ones(2))
    # the box centre is the targets' mean patch centre to within a tenth of a patch
    generator = torch.Generator().manual_seed(0)
    boxes = torch.cat((torch.rand(500, 2, generator=generator) * 0.5 + 0.25,
                       torch.rand(500, 2, generator=generator) * 0.2 + 0.1), -1)
    mean = patch_targets(boxes, (8, 8)) @ patch_centers(8, 8)
    assert ((mean - boxes[:, :2]).abs() * 8).max() < 0.1


def test_patch_kl_loss_is_zero_exactly_at_the_target_and_ignores_invalid_rows():
    from tpo.losses.box import patch_kl_loss
    from tpo.ops.boxes import patch_targets

    boxes = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])
    perfect = patch_targets(boxes, (2, 4)).clamp(min=1e-9).log()
    assert patch_kl_loss(perfect, boxes, (2, 4), torch.tensor([True, True])) < 1e-6
    wrong = perfect.flip(-1)
    assert patch_kl_loss(wrong, boxes, (2, 4), torch.tensor([True, True])) > 1
    assert patch_kl_loss(wrong, boxes, (2, 4), torch.tensor([False, False])) == 0

"""tpo.ops.masks: losses and IoU against hand-computed values and per-pixel loops."""

from __future__ import annotations

import math

import pytest
import torch

from tpo.ops.masks import bce_loss, dice_loss, focal_loss, mask_iou, resize_mask_logits


def test_mask_iou_hand_computed():
    pred = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    pred[0, :2, :] = True  # 8 pixels
    gt[0, 1:3, :] = True  # 8 pixels, 4 shared
    torch.testing.assert_close(mask_iou(pred, gt), torch.tensor([4 / 12, 1.0]))


def test_dice_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # p = 0.5 everywhere
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # 1 - (2 * 0.5 + 1) / (2 + 1 + 1)
    torch.testing.assert_close(dice_loss(logits, target), torch.tensor(0.5))


def _focal_reference(logits, target, alpha=0.25, gamma=2.0):
    total = 0.0
    values = list(zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True))
    for z, y in values:
        p = 1 / (1 + math.exp(-z))
        p_t = p if y else 1 - p
        a_t = alpha if y else 1 - alpha
        total += -a_t * (1 - p_t) ** gamma * math.log(p_t)
    return total / len(values)


def test_focal_and_bce_against_loops():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 5, dtype=torch.float64) * 2
    target = torch.rand(3, 5, 5) > 0.5
    got = focal_loss(logits, target)
    for i in range(3):
        assert got[i].item() == pytest.approx(_focal_reference(logits[i], target[i]), rel=1e-5)
    bce = bce_loss(logits, target)
    p = logits.sigmoid()
    ref = -(target * p.log() + (~target) * (1 - p).log()).mean((-2, -1))
    torch.testing.assert_close(bce, ref.float())


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="logits, targets"):
        dice_loss(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))


def test_resize_keeps_leading_dims():
    logits = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = resize_mask_logits(logits, (8, 8))
    assert out.shape == (1, 1, 8, 8)
    assert out[0, 0, 0, 0] < out[0, 0, -1, -1]

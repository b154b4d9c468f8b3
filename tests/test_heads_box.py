"""BoxHead and BoxCriterion."""

from __future__ import annotations

import math

import pytest
import torch

from tpo.heads import BoxHead, BoxOutput
from tpo.losses import BoxCriterion, weighted
from tpo.losses.box import box_delta_loss
from tpo.ops.boxes import box_iou_elementwise, boxes_to_pixels

D, DV, N = 16, 12, 16
TARGET = torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.5, 0.4, 0.2], [0.5, 0.5, 0.8, 0.9]])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _head() -> BoxHead:
    return BoxHead(embed_dim=D, visual_dim=DV, hidden_dim=32, num_heads=4, dim_feedforward=64)


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, D, generator=generator), torch.randn(3, N, DV, generator=generator)


@pytest.mark.slow
@pytest.mark.parametrize("use_visual", [True, False])
def test_overfits_one_batch(use_visual):
    torch.manual_seed(0)
    head = _head()
    task, visual = _inputs()
    visual = visual if use_visual else None
    steps = 200
    optimizer = torch.optim.AdamW(head.parameters(), lr=5e-3, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for step in range(steps):
        total = sum(weighted(head.loss(head(task, visual), {"boxes": TARGET}), head.weight_dict).values())
        if step == 0:
            first = total.item()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        schedule.step()
    assert total.item() <= 0.1 * first
    size = (120, 200)
    predictions = head.postprocess(head(task, visual), [{"image_size": size}] * 3)
    boxes = torch.stack([p.box_xyxy for p in predictions])
    assert (box_iou_elementwise(boxes, boxes_to_pixels(TARGET, size)) >= 0.9).all()


def test_gradients_reach_task_embeddings_and_visual():
    torch.manual_seed(0)
    head = _head()
    task, visual = _inputs()
    task.requires_grad_(True)
    visual.requires_grad_(True)
    losses = head.loss(head(task, visual), {"boxes": TARGET})
    assert set(losses) == {"loss_bbox", "loss_giou", "loss_delta", "loss_patch"} == set(head.weight_dict)
    for name, value in losses.items():
        task_grad, visual_grad = torch.autograd.grad(value, (task, visual), retain_graph=True)
        assert task_grad.abs().sum() > 0 and visual_grad.abs().sum() > 0, name


def test_criterion_hand_computed():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    target = torch.tensor([[0.5, 0.5, 0.4, 0.2]])
    criterion = BoxCriterion()
    losses = criterion(pred, target)
    # L1: |0.2 - 0.4| = 0.2 ; IoU = 0.04 / 0.08 = 0.5, hull = union -> GIoU 0.5
    assert losses["loss_bbox"].item() == pytest.approx(0.2)
    assert losses["loss_giou"].item() == pytest.approx(0.5)
    scaled = weighted(losses, criterion.weight_dict)  # DETR's weights 5 and 2
    assert scaled["loss_bbox"].item() == pytest.approx(5 * 0.2)
    assert scaled["loss_giou"].item() == pytest.approx(2 * 0.5)
    # deltas (0, 0, log(0.2 / 0.4), log(0.2 / 0.2)) -> smooth-L1 (beta 1/9): |log 0.5| - 1/18
    assert losses["loss_delta"].item() == pytest.approx(math.log(2) - 1 / 18)


def test_delta_loss_is_scale_free():
    small = box_delta_loss(torch.tensor([[0.51, 0.5, 0.1, 0.1]]), torch.tensor([[0.5, 0.5, 0.1, 0.1]]))
    big = box_delta_loss(torch.tensor([[0.6, 0.5, 1.0, 1.0]]), torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
    torch.testing.assert_close(small, big)
    same = torch.tensor([[0.3, 0.4, 0.2, 0.1]])
    assert box_delta_loss(same, same.clone()).item() == 0


def test_no_valid_box_gives_zero_terms_still_in_the_graph():
    pred = torch.rand(2, 3, 4, requires_grad=True)
    logits = torch.randn(2, 3, 4, requires_grad=True)
    none = torch.zeros(2, 3, dtype=torch.bool)
    target = torch.full((2, 3, 4), 0.5)
    losses = BoxCriterion()(pred, target, none, patch_logits=logits, grid_size=(2, 2))
    for name, value in losses.items():
        assert value.item() == 0 and value.requires_grad, name
    pred_grad, logits_grad = torch.autograd.grad(sum(losses.values()), (pred, logits))
    assert not pred_grad.any() and not logits_grad.any()


def test_postprocess_pixels():
    output = BoxOutput(boxes=torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    (prediction,) = _head().postprocess(output, [{"image_size": (100, 200)}])
    torch.testing.assert_close(prediction.box_xyxy, torch.tensor([50.0, 25.0, 150.0, 75.0]))


def test_bad_input_raises():
    head = _head()
    task, visual = _inputs()
    bad = TARGET.clone()
    bad[2, 3] = -0.1
    with pytest.raises(ValueError, match=r"targets\['boxes'\]: box at sample 2"):
        head.loss(head(task, visual), {"boxes": bad})
    with pytest.raises(ValueError, match="targets\\['boxes'\\]: expected"):
        head.loss(head(task, visual), {"boxes": TARGET[:2]})
    with pytest.raises(ValueError, match="visual"):
        head(task, visual[:, :15])
    with pytest.raises(ValueError, match="grid_size"):
        head(task, visual, grid_size=(3, 4))
    assert head(task, visual[:, :12], grid_size=(3, 4)).boxes.shape == (3, 4)


def test_bf16_autocast():
    head = _head()
    task, visual = _inputs()
    task.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = head(task, visual)
        total = sum(head.loss(output, {"boxes": TARGET}).values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(task.grad).all()
    assert head.postprocess(output, [{"image_size": (8, 8)}] * 3)[0].box_xyxy.dtype == torch.float32

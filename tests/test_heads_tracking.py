"""TrackingHead and TrackingCriterion."""

from __future__ import annotations

import pytest
import torch

from tpo.heads import TrackingHead, TrackingOutput
from tpo.losses import weighted
from tpo.ops.boxes import box_iou_elementwise, box_xywh_to_xyxy, boxes_to_pixels

D, DV, B, T, N = 16, 12, 3, 4, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _head() -> TrackingHead:
    return TrackingHead(embed_dim=D, visual_dim=DV, hidden_dim=32, num_heads=4, dim_feedforward=64)


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    task = torch.randn(B, D, generator=generator)
    frames = torch.randn(B, T, N, DV, generator=generator)
    centers = torch.linspace(0.2, 0.7, T)
    boxes = torch.stack(
        [
            torch.stack(
                (
                    centers,
                    torch.full((T,), 0.4 + 0.1 * b),
                    torch.full((T,), 0.2 + 0.05 * b),
                    torch.full((T,), 0.3),
                ),
                -1,
            )
            for b in range(B)
        ]
    )
    visible = torch.ones(B, T, dtype=torch.bool)
    visible[1, 2] = False
    return task, frames, {"boxes": boxes, "visible": visible}


@pytest.mark.slow
def test_overfits_one_batch():
    torch.manual_seed(0)
    head = _head()
    task, frames, targets = _batch()
    steps = 250
    optimizer = torch.optim.AdamW(head.parameters(), lr=5e-3, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for step in range(steps):
        total = sum(weighted(head.loss(head(task, frames), targets), head.weight_dict).values())
        if step == 0:
            first = total.item()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        schedule.step()
    assert total.item() <= 0.1 * first
    size = (90, 160)
    predictions = head.postprocess(head(task, frames), [{"image_size": size}] * B)
    for b, prediction in enumerate(predictions):
        assert prediction.visible.tolist() == targets["visible"][b].tolist()
        iou = box_iou_elementwise(
            box_xywh_to_xyxy(prediction.boxes_xywh), boxes_to_pixels(targets["boxes"][b], size)
        )
        assert (iou[targets["visible"][b]] >= 0.9).all()


def test_invisible_frames_do_not_enter_box_terms():
    torch.manual_seed(0)
    head = _head()
    task, frames, targets = _batch()
    output = head(task, frames)
    moved = {"boxes": targets["boxes"].clone(), "visible": targets["visible"]}
    moved["boxes"][1, 2] = torch.tensor([0.9, 0.9, 0.1, 0.1])
    a, b = head.loss(output, targets), head.loss(output, moved)
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_gradients_reach_task_embeddings_from_every_term():
    torch.manual_seed(0)
    head = _head()
    task, frames, targets = _batch()
    task.requires_grad_(True)
    losses = head.loss(head(task, frames), targets)
    terms = {"loss_bbox", "loss_giou", "loss_delta", "loss_visible", "loss_patch"}
    assert set(losses) == terms == set(head.weight_dict)
    for name, value in losses.items():
        (grad,) = torch.autograd.grad(value, task, retain_graph=True)
        assert grad.abs().sum() > 0, name


def test_no_visible_frame_leaves_box_terms_zero_but_in_the_graph():
    head = _head()
    task, frames, targets = _batch()
    task.requires_grad_(True)
    hidden = {"boxes": targets["boxes"], "visible": torch.zeros(B, T, dtype=torch.bool)}
    losses = head.loss(head(task, frames), hidden)
    for name in ("loss_bbox", "loss_giou", "loss_patch"):
        assert losses[name].item() == 0 and losses[name].requires_grad, name
    (grad,) = torch.autograd.grad(losses["loss_visible"], task)
    assert grad.abs().sum() > 0


def test_postprocess_xywh_pixels():
    output = TrackingOutput(
        boxes=torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]]]),
        visible=torch.tensor([[2.0, -2.0]]),
    )
    (prediction,) = _head().postprocess(output, [{"image_size": (100, 200)}])
    expected = torch.tensor([[50.0, 25.0, 100.0, 50.0], [0.0, 0.0, 100.0, 50.0]])
    torch.testing.assert_close(prediction.boxes_xywh, expected)
    assert prediction.visible.tolist() == [True, False]
    strict = TrackingHead(embed_dim=D, visual_dim=DV, hidden_dim=32, num_heads=4, visible_threshold=0.9)
    assert strict.postprocess(output, [{"image_size": (100, 200)}])[0].visible.tolist() == [False, False]


def test_bad_input_raises():
    head = _head()
    task, frames, targets = _batch()
    output = head(task, frames)
    bad = {"boxes": targets["boxes"].clone(), "visible": targets["visible"]}
    bad["boxes"][2, 3, 2] = 0.0  # zero width on a visible frame
    with pytest.raises(ValueError, match=r"targets\['boxes'\]: box at sample 2"):
        head.loss(output, bad)
    hidden = {"boxes": bad["boxes"], "visible": targets["visible"].clone()}
    hidden["visible"][2, 3] = False  # the same box on an invisible frame is ignored
    head.loss(output, hidden)
    with pytest.raises(ValueError, match=r"targets\['visible'\]"):
        head.loss(output, {"boxes": targets["boxes"], "visible": targets["visible"][:, :2]})
    with pytest.raises(ValueError, match="frames"):
        head(task, frames[:, :, 0])


def test_bf16_autocast():
    head = _head()
    task, frames, targets = _batch()
    task.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = head(task, frames)
        total = sum(head.loss(output, targets).values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(task.grad).all()
    assert len(head.postprocess(output, [{"image_size": (8, 8)}] * B)) == B


def test_box_window_centres_on_the_box_and_sums_to_one():
    from tpo.heads.track import box_window

    weights = box_window(torch.tensor([[0.125, 0.625, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]]), 4, 4)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    # box 0 covers patch (row 2, col 0) exactly: it weighs most; the next patch, 1/4 away = two
    # standard deviations (half the box side, 1/8), weighs exp(-0.5 * 2**2) as much
    grid = weights[0].view(4, 4)
    assert int(grid.argmax()) == 2 * 4 + 0
    torch.testing.assert_close(grid[2, 0] / grid[2, 1], torch.tensor(2.0).exp())
    # a degenerate box falls back to half a patch: still a proper distribution around the centre
    assert weights[1].view(4, 4)[1:3, 1:3].sum() > 0.9


def test_prompt_box_steers_the_track_and_is_checked():
    head = _head().eval()
    task, frames, _ = _batch()
    boxes = torch.tensor([[0.2, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]])
    with torch.no_grad():
        plain = head(task, frames).boxes
        a = head(task, frames, prompt_boxes=boxes).boxes
        b = head(task, frames, prompt_boxes=boxes.flip(0)).boxes
    assert not torch.allclose(plain, a) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="prompt_boxes"):
        head(task, frames, prompt_boxes=boxes[:2])
    with pytest.raises(ValueError, match="prompt_boxes"):
        head(task, frames, prompt_boxes=torch.tensor([[0.2, float("nan"), 0.2, 0.2]]).expand(3, 4))
    with pytest.raises(ValueError, match="prompt_boxes"):
        head(task, frames, prompt_boxes=boxes * 3)


def test_first_frame_reports_the_given_box_and_a_missing_box_looks_at_the_whole_frame():
    head = _head().eval()
    last = head.prompt_box_embed.layers[-1]
    with torch.no_grad():  # the box embedding off: a NaN row then differs from a whole-frame row
        last.weight.zero_()  # only in the first frame's reported box
        last.bias.zero_()
    task, frames, _ = _batch()
    boxes = torch.tensor([[0.2, 0.3, 0.2, 0.2], [float("nan")] * 4, [0.5, 0.5, 0.3, 0.3]])
    whole_frame = torch.tensor([0.5, 0.5, 1.0, 1.0])
    with torch.no_grad():
        out = head(task, frames, prompt_boxes=boxes)
        whole = head(task, frames, prompt_boxes=torch.where(boxes.isnan(), whole_frame, boxes))
    torch.testing.assert_close(out.boxes[[0, 2], 0], boxes[[0, 2]])
    assert not torch.allclose(out.boxes[[0, 2], 1], boxes[[0, 2]], atol=1e-3)
    assert torch.isfinite(out.boxes).all() and torch.isfinite(out.visible).all()
    torch.testing.assert_close(out.boxes[1, 1:], whole.boxes[1, 1:])
    torch.testing.assert_close(whole.boxes[1, 0], whole_frame)
    assert not torch.allclose(out.boxes[1, 0], whole_frame)


def test_prompt_box_gradients_reach_the_template_and_box_layers():
    head = _head()
    task, frames, targets = _batch()
    frames.requires_grad_(True)
    out = head(task, frames, prompt_boxes=targets["boxes"][:, 0])
    sum(head.loss(out, targets).values()).backward()
    for name in ("template_proj", "prompt_box_embed"):
        grads = [p.grad for p in getattr(head, name).parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    assert frames.grad[:, 0].abs().sum() > 0


def test_adapter_takes_each_samples_first_input_box():
    from tpo.tasks import get_task

    batch = {
        "prompt_boxes": torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]]),
        "prompt_box_sample": torch.tensor([0, 2, 2]),
    }
    inputs = get_task("track").batch_inputs(batch, torch.tensor([2, 0]))
    torch.testing.assert_close(inputs["prompt_boxes"], batch["prompt_boxes"][[1, 0]])
    missing = get_task("track").batch_inputs(batch, torch.tensor([1, 0]))["prompt_boxes"]
    assert missing[0].isnan().all()
    torch.testing.assert_close(missing[1], batch["prompt_boxes"][0])
    assert get_task("track").batch_inputs({}, torch.tensor([0])) == {}

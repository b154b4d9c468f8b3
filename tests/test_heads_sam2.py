"""SAM2MaskHead on a randomly initialised SAM2 (no checkpoint, small frames)."""

from __future__ import annotations

import warnings

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # hydra's deprecation warnings under omegaconf 2.4
    pytest.importorskip("sam2", reason="SAM2MaskHead needs the optional 'sam2' package")

from tpo.heads import SAM2MaskHead  # noqa: E402

D, SIZE = 16, 128
BOXES = torch.tensor([[0.4, 0.5, 0.3, 0.4], [0.6, 0.3, 0.5, 0.2]])


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SAM2MaskHead(embed_dim=D, image_size=SIZE, hidden_dim=64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_box_prompt_matches_sam2_box_encoding(head):
    """Two corner tokens equal SAM2's own box-prompt path; the third is its padding point."""
    encoder = head.sam2.sam_prompt_encoder
    ours = head.box_prompt(BOXES)
    cx, cy, w, h = (BOXES * SIZE).unbind(-1)
    xyxy = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)
    with torch.no_grad():
        box_tokens, _ = encoder(points=None, boxes=xyxy, masks=None)
    torch.testing.assert_close(ours[:, :2], box_tokens)
    torch.testing.assert_close(ours[:, 2], encoder.not_a_point_embed.weight.expand(2, -1))


def test_forward_backward_and_prompt_distillation(head):
    torch.manual_seed(0)
    task = torch.randn(2, D, requires_grad=True)
    images = torch.rand(2, 2, 3, SIZE, SIZE)
    masks = torch.zeros(2, 2, SIZE, SIZE, dtype=torch.bool)
    masks[:, :, 30:90, 40:100] = True
    output = head(task, images)
    assert output.masks.shape == (2, 2, SIZE // 4, SIZE // 4) and output.iou.shape == (2, 2)
    assert output.prompts.shape == (2, 3, 256)
    losses = head.loss(output, {"boxes": BOXES, "masks": masks})
    assert set(losses) == {"loss_prompt", "loss_mask", "loss_dice", "loss_iou"}
    for name, value in losses.items():
        (grad,) = torch.autograd.grad(value, task, retain_graph=True)
        assert grad.abs().sum() > 0, name
    sum(losses.values()).backward()
    assert all(p.grad is None for p in head.sam2.parameters())
    (prediction, _) = head.postprocess(output, [{"image_size": (64, 64)}] * 2)
    assert prediction.masks.shape == (2, 64, 64) and prediction.masks.dtype == torch.bool

    # the adapter alone learns SAM2's box prompt (TPO's distillation term)
    optimizer = torch.optim.AdamW(head.adapter.parameters(), lr=3e-3)
    for step in range(60):
        prompts = head.adapter(task.detach()).unflatten(-1, (3, head.prompt_dim))
        loss = torch.nn.functional.l1_loss(prompts, head.box_prompt(BOXES))
        if step == 0:
            first = loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() <= 0.1 * first


def test_sam2_stays_frozen_in_eval_mode(head):
    head.train()
    assert head.training and not head.sam2.training
    assert not any(p.requires_grad for p in head.sam2.parameters())
    assert all(p.requires_grad for p in head.adapter.parameters())


def test_bad_input_raises(head):
    with pytest.raises(ValueError, match="images"):
        head(torch.randn(1, D), torch.rand(1, 1, 3, 64, 64))
    output = head(torch.randn(2, D), torch.rand(2, 1, 3, SIZE, SIZE))
    bad = BOXES.clone()
    bad[1, 2] = 0.0
    with pytest.raises(ValueError, match=r"targets\['boxes'\]: box at sample 1"):
        head.loss(output, {"boxes": bad})
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        SAM2MaskHead(embed_dim=D, image_size=SIZE, checkpoint="/nonexistent/sam2.pt")


def test_bf16_autocast(head):
    task = torch.randn(2, D, requires_grad=True)
    masks = torch.zeros(2, 1, SIZE, SIZE, dtype=torch.bool)
    masks[:, :, 20:80, 30:90] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = head(task, torch.rand(2, 1, 3, SIZE, SIZE))
        total = sum(head.loss(output, {"boxes": BOXES, "masks": masks}).values())
    total.backward()
    assert torch.isfinite(total) and task.grad.abs().sum() > 0

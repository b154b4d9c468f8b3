"""MaskHead and MaskCriterion."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from tpo.heads import MaskHead
from tpo.losses import MaskCriterion, weighted
from tpo.ops.masks import mask_iou

D, C, B, T = 16, 12, 3, 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _head(**kwargs) -> MaskHead:
    return MaskHead(embed_dim=D, image_dim=C, hidden_dim=64, num_heads=4, mlp_dim=64, **kwargs)


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    task = torch.randn(B, D, generator=generator)
    image = torch.randn(B, T, C, 4, 4, generator=generator)
    masks = torch.zeros(B, T, 32, 32, dtype=torch.bool)
    masks[0, :, 4:20, 8:24] = True
    masks[1, 0, 10:30, 2:12] = True
    masks[1, 1, 12:30, 4:14] = True
    masks[2, 0, 16:, 16:] = True  # the object left: frame 1 of sample 2 is empty
    return task, image, {"masks": masks}


@pytest.mark.slow
@pytest.mark.parametrize("mask_loss", ["focal", "bce"])
def test_overfits_one_batch(mask_loss):
    torch.manual_seed(0)
    head = _head(mask_loss=mask_loss)
    task, image, targets = _batch()
    steps = 150
    optimizer = torch.optim.AdamW(head.parameters(), lr=5e-3, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for step in range(steps):
        total = sum(weighted(head.loss(head(task, image), targets), head.weight_dict).values())
        if step == 0:
            first = total.item()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        schedule.step()
    assert total.item() <= 0.1 * first
    predictions = head.postprocess(head(task, image), [{"image_size": (32, 32)}] * B)
    masks = torch.stack([p.masks for p in predictions])
    assert (mask_iou(masks, targets["masks"]) >= 0.9).all()
    assert not masks[2, 1].any()  # the absent object's frame is empty: the object score learned it
    present = targets["masks"].flatten(2).any(-1)
    assert (torch.stack([p.scores for p in predictions])[present] > 0.8).all()


def test_gradients_reach_task_embeddings_from_every_term():
    torch.manual_seed(0)
    head = _head()
    task, image, targets = _batch()
    task.requires_grad_(True)
    losses = head.loss(head(task, image), targets)
    assert set(losses) == {"loss_mask", "loss_dice", "loss_iou", "loss_class"} == set(head.weight_dict)
    for name, value in losses.items():
        (grad,) = torch.autograd.grad(value, task, retain_graph=True)
        assert grad.abs().sum() > 0, name


@pytest.mark.parametrize("temporal", [True, False])
def test_temporal_attention_links_frames(temporal):
    torch.manual_seed(0)
    head = _head(temporal_attention=temporal).eval()
    task, image, _ = _batch()
    other = image.clone()
    other[:, 1] = torch.randn_like(other[:, 1])
    changed = not torch.allclose(head(task, image).masks[:, 0], head(task, other).masks[:, 0])
    assert changed == temporal


def test_criterion_weights_and_iou_target():
    logits = torch.full((1, 4, 4), -10.0)
    logits[0, :2] = 10.0
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :1] = True  # predicted 8 pixels, 4 correct -> IoU 0.5
    focal = MaskCriterion()(logits, target, torch.tensor([0.5]))
    assert focal["loss_iou"].item() == pytest.approx(0.0, abs=1e-12)
    criterion = MaskCriterion(mask_loss="bce")
    bce = criterion(logits, target, torch.tensor([1.0]))
    assert bce["loss_iou"].item() == pytest.approx(0.25)
    # every pixel costs log(1 + e^-10); the 4 wrong ones 10 more
    expected = (4 * 10 + 16 * math.log1p(math.exp(-10))) / 16
    assert bce["loss_mask"].item() == pytest.approx(expected, rel=1e-5)
    assert bce["loss_dice"].item() == pytest.approx(1 - 9 / 13, rel=1e-3)
    scaled = weighted(bce, criterion.weight_dict)  # LISA's weights: BCE 2, dice 0.5
    assert scaled["loss_mask"].item() == pytest.approx(2.0 * expected, rel=1e-5)
    assert scaled["loss_dice"].item() == pytest.approx(0.5 * (1 - 9 / 13), rel=1e-3)
    assert scaled["loss_iou"].item() == pytest.approx(0.25)
    sam2 = {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}
    assert MaskCriterion().weight_dict == sam2


def test_object_score_takes_absent_frames_off_the_mask_terms():
    logits = torch.zeros(2, 4, 4)
    logits[0, :2] = 10.0
    target = torch.zeros(2, 4, 4, dtype=torch.bool)
    target[0, :1] = True  # mask 0: 8 pixels predicted, 4 right; mask 1: the object is absent
    iou_pred = torch.tensor([0.25, 0.9])
    object_logits = torch.tensor([2.0, -1.0])
    criterion = MaskCriterion(mask_loss="bce")
    with_score = criterion(logits, target, iou_pred, object_logits)
    present_only = criterion(logits[:1], target[:1], iou_pred[:1])
    for name in ("loss_mask", "loss_dice", "loss_iou"):
        assert with_score[name].item() == pytest.approx(present_only[name].item(), rel=1e-6), name
    assert present_only["loss_iou"].item() == pytest.approx(0.25**2)
    expected_class = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert with_score["loss_class"].item() == pytest.approx(expected_class, rel=1e-6)
    without_score = criterion(logits, target, iou_pred)
    assert "loss_class" not in without_score
    assert without_score["loss_mask"].item() != pytest.approx(present_only["loss_mask"].item())


def test_postprocess_empties_frames_with_a_negative_object_score():
    head = _head().eval()
    task, image, _ = _batch()
    output = head(task, image)
    output.masks = torch.full_like(output.masks, 5.0)
    output.object_logits = torch.tensor([[1.0, -1.0], [-0.5, 0.0], [3.0, 2.0]])
    masks = torch.stack([p.masks for p in head.postprocess(output, [{"image_size": (8, 8)}] * B)])
    assert masks.shape == (B, T, 8, 8)
    assert masks.flatten(2).all(-1).tolist() == [[True, False], [False, True], [True, True]]
    assert not masks[0, 1].any() and not masks[1, 0].any()


def test_bad_input_raises():
    head = _head()
    task, image, targets = _batch()
    output = head(task, image)
    with pytest.raises(ValueError, match=r"targets\['masks'\]: size 32x48 does not have"):
        head.loss(output, {"masks": torch.zeros(B, T, 32, 48, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"targets\['masks'\]: expected"):
        head.loss(output, {"masks": targets["masks"][:, :1]})
    with pytest.raises(ValueError, match="image"):
        head(task, image[:, 0])
    with pytest.raises(ValueError, match="mask_loss"):
        MaskCriterion(mask_loss="l2")


def test_bf16_autocast():
    head = _head()
    task, image, targets = _batch()
    task.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = head(task, image)
        total = sum(head.loss(output, targets).values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(task.grad).all()
    assert head.postprocess(output, [{"image_size": (20, 20)}] * B)[0].masks.shape == (T, 20, 20)


def test_multiscale_timm_features():
    """A timm ``features_only`` encoder's stride 4/8/16 maps drive the SAM2-style skips."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    encoder = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2, 3))
    c4, c8, c16 = encoder.feature_info.channels()
    head = MaskHead(
        embed_dim=D,
        image_dim=c16,
        hidden_dim=32,
        num_heads=4,
        mlp_dim=64,
        high_res_dims=(c4, c8),
    )
    frames = torch.randn(B * T, 3, 64, 64)
    s4, s8, s16 = (f.unflatten(0, (B, T)) for f in encoder(frames))
    s4.requires_grad_(True)
    s8.requires_grad_(True)
    task, _, targets = _batch()
    output = head(task, s16, high_res=(s4, s8))
    assert output.masks.shape == (B, T, 16, 16)
    total = sum(head.loss(output, targets).values())
    grad4, grad8 = torch.autograd.grad(total, (s4, s8))
    assert grad4.abs().sum() > 0 and grad8.abs().sum() > 0
    with pytest.raises(ValueError, match=r"high_res\[1\]"):
        head(task, s16, high_res=(s4, s4))
    with pytest.raises(ValueError, match="high_res"):
        head(task, s16)
    with pytest.raises(ValueError, match="high_res"):
        _head()(task, s16[:, :, :C], high_res=(s4, s8))


def test_import_leaves_sam2_lazy():
    """``import tpo.heads`` loads neither transformers' SAM2 nor the ``sam2`` package; the head
    is built on transformers alone."""
    code = (
        "import sys\n"
        "sys.modules['sam2'] = None\n"
        "import tpo.heads\n"
        "assert 'transformers.models.sam2_video.modeling_sam2_video' not in sys.modules\n"
        "assert tpo.heads.SAM2MaskHead.__module__ == 'tpo.heads.sam2'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_output_tokens_are_named_and_high_res_scales_exposed():
    head = _head()
    tokens = (head.object_score_token, head.iou_token, head.mask_tokens)
    assert all(token.weight.shape == (1, 64) for token in tokens)
    assert head.high_res_scales == MaskHead.high_res_scales == (4, 2)
    task, image, targets = _batch()
    head.loss(head(task, image), targets)["loss_iou"].backward()
    assert head.iou_token.weight.grad.abs().sum() > 0
    deep = _head(head_depth=2, attention_downsample_rate=1)
    assert len(deep.hypernet.layers) == len(deep.iou_head.layers) == len(deep.object_score_head.layers) == 2
    assert deep.transformer.final_attn.q_proj.out_features == 64


def test_upscaling_starts_without_checkerboard():
    """ICNR: at initialisation each 2x2 block of the upscaled map is constant, so a constant
    image embedding gives a mask constant over each 4x4 block of pixels."""
    head = MaskHead(embed_dim=16, image_dim=8, hidden_dim=32, num_heads=2, mlp_dim=32)
    x = torch.randn(3, 32, 4, 5)
    up = head._upscale(x, None)
    blocks = up.unflatten(2, (4, 4)).unflatten(4, (5, 4))  # (N, c, 4, 4, 5, 4)
    torch.testing.assert_close(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))

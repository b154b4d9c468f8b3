"""A MultiTaskDataModule batch feeds the tiny backbones (forward, LM loss, hidden states at the
task tokens aligned with the targets' sample indices) and every head's forward and loss."""

from __future__ import annotations

import pytest
import torch

from tpo.datamodules import MultiTaskDataModule, make_synthetic_dataset

tiny = pytest.importorskip("tpo.backbones.tiny", reason="the tiny backbones live in tpo.backbones")
heads = pytest.importorskip("tpo.heads", reason="the heads live in tpo.heads")

TASKS = ("temporal", "box", "track", "mask", "conversation")
# LLaVA-OneVision and LLaVA-NeXT-Video give images and videos different token counts per frame,
# so their batches carry images as still videos.
BACKBONES = {
    "llava": (lambda: tiny.tiny_llava("llava"), {}),
    "llava_onevision": (lambda: tiny.tiny_llava("llava_onevision"), {"images_as_videos": True}),
    "llava_next_video": (lambda: tiny.tiny_llava("llava_next_video"), {"images_as_videos": True}),
    "video_llava": (lambda: tiny.tiny_llava("video_llava"), {}),
    "videochat": (lambda: tiny.tiny_videochat(), {}),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, 10, size=32, num_frames=4, fps=4.0, seed=0)
    return root


def _batch(root, backbone, options):
    """A training batch holding two samples of every task (the sampler may draw fewer)."""
    dm = MultiTaskDataModule.from_synthetic(root, backbone=backbone, batch_size=10, seed=1,
                                            weights=dict.fromkeys(TASKS, 1.0),
                                            collator_options=options)
    first = next(iter(dm.train_dataloader()))
    assert len(first["tasks"]) == 10
    return dm.collator([dm.train_set[(d, i, 7)] for i in (0, 1) for d in range(len(TASKS))])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_batch_feeds_backbone_and_heads(root, name):
    torch.manual_seed(0)
    make, options = BACKBONES[name]
    backbone = make()
    batch = _batch(root, backbone, options)
    assert set(batch["tasks"]) == set(TASKS)
    out = backbone(batch)
    assert torch.isfinite(out.loss)
    b, t = out.visual.shape[:2]
    assert b == len(batch["tasks"]) and t == 4
    dim, vdim = backbone.hidden_size, out.visual.shape[-1]
    grid = out.visual_grid
    losses = {}
    for task, target in batch["targets"].items():
        gathered = out.tasks[task]
        assert torch.equal(gathered.batch_index, target["sample_index"])
        assert gathered.embeds.shape == (len(target["sample_index"]), dim)
        visual = out.visual[gathered.batch_index]  # (n, T, N, Dv)
        if task == "temporal":
            head = heads.TemporalGroundingHead(embed_dim=dim, video_dim=vdim, hidden_dim=32,
                                               num_heads=4)
            output = head(gathered.embeds, visual, out.visual_mask[gathered.batch_index])
            losses[task] = head.loss(output, target["per_sample"])
        elif task == "box":
            head = heads.BoxHead(embed_dim=dim, visual_dim=vdim, hidden_dim=32, num_heads=4)
            losses[task] = head.loss(head(gathered.embeds, visual[:, 0], grid), target)
        elif task == "track":
            head = heads.TrackingHead(embed_dim=dim, visual_dim=vdim, hidden_dim=32, num_heads=4)
            losses[task] = head.loss(head(gathered.embeds, visual, grid), target)
        elif task == "mask":
            head = heads.MaskHead(embed_dim=dim, image_dim=vdim, hidden_dim=32, num_heads=4,
                                  mlp_dim=64)
            image = visual.unflatten(2, grid).permute(0, 1, 4, 2, 3)  # (n, T, Dv, h, w)
            losses[task] = head.loss(head(gathered.embeds, image), target)
    assert set(losses) == {"temporal", "box", "track", "mask"}
    total = out.loss + sum(v for terms in losses.values() for v in terms.values())
    assert torch.isfinite(total)
    total.backward()
    embeddings = backbone.task_tokens.embeddings
    for task in ("temporal", "box", "track", "mask"):
        assert embeddings[task].grad is not None and embeddings[task].grad.abs().sum() > 0
    assert backbone.task_tokens.box_encoder.mlp[0].weight.grad.abs().sum() > 0

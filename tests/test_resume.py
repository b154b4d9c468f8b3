"""A Lightning checkpoint taken mid-epoch resumes exactly: same batches, same losses."""

from __future__ import annotations

import pytest
import torch
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from test_module import SMALL_HEADS

from tpo.backbones.tiny import tiny_llava
from tpo.datamodules import MultiTaskDataModule, MultiTaskSampler, make_synthetic_dataset
from tpo.datamodules.multitask import ResumableDataLoader
from tpo.module import TPOModule

BATCHES_PER_EPOCH = 4  # 8 draws per epoch, 2 per batch
TOTAL_STEPS = 7  # into the second epoch
# dropout in a head: the resumed run must draw the same masks too
HEADS = {**SMALL_HEADS, "temporal": {**SMALL_HEADS["temporal"], "dropout": 0.1}}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, n_videos=8, size=32, num_frames=4, seed=2)
    return root


class Record(Callback):
    """Per training step: the loss and the ids of the batch's samples."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.ids: list[list[str]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())
        self.ids.append([m["id"] for m in batch["meta"]])


def build(root):
    seed_everything(0)
    module = TPOModule(backbone=tiny_llava("llava"), heads=HEADS, stage="stage3",
                       learning_rates={"heads": 1e-3, "vision": 1e-3}, schedule_steps=TOTAL_STEPS)
    dm = MultiTaskDataModule.from_synthetic(
        root, backbone=module.backbone, tasks=("temporal", "box", "track", "mask"), batch_size=2,
        num_frames=4, samples_per_epoch=2 * BATCHES_PER_EPOCH, seed=1)
    return module, dm


def fit(root, tmp_path, max_steps: int, callbacks: list, ckpt_path=None) -> None:
    module, dm = build(root)
    trainer = Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(module, dm, ckpt_path=ckpt_path)


@pytest.fixture(scope="module")
def uninterrupted(synthetic, tmp_path_factory) -> Record:
    full = Record()
    fit(synthetic, tmp_path_factory.mktemp("uninterrupted"), TOTAL_STEPS, [full])
    assert len(full.losses) == TOTAL_STEPS
    assert full.ids[0] != full.ids[BATCHES_PER_EPOCH]  # the epochs draw differently
    return full


@pytest.mark.slow
@pytest.mark.parametrize("stop", [2, 5], ids=["first_epoch", "second_epoch"])
def test_mid_epoch_checkpoint_resumes_with_the_same_batches_and_losses(
    synthetic, uninterrupted, tmp_path, stop
):
    full = uninterrupted

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=stop, save_top_k=-1)
    first = Record()
    fit(synthetic, tmp_path / "b", stop, [first, saver])
    (checkpoint,) = (tmp_path / "ckpt").glob(f"*step={stop}.ckpt")
    state = torch.load(checkpoint, weights_only=False)["loops"]["fit_loop"]["state_dict"]
    assert state["combined_loader"] == [{"epoch": stop // BATCHES_PER_EPOCH,
                                         "batches": stop % BATCHES_PER_EPOCH,
                                         "batch_size": 2, "num_replicas": 1}]

    resumed = Record()
    fit(synthetic, tmp_path / "c", TOTAL_STEPS, [resumed], ckpt_path=str(checkpoint))
    assert first.ids + resumed.ids == full.ids
    torch.testing.assert_close(torch.stack(first.losses + resumed.losses),
                               torch.stack(full.losses), rtol=1e-6, atol=1e-7)


def test_sampler_start_after_continues_every_rank_where_it_stopped():
    def rank_keys(world: int, rank: int, start: int | None = None) -> list:
        sampler = MultiTaskSampler([5, 4], num_samples=14, seed=3, num_replicas=world, rank=rank)
        sampler.set_epoch(2)
        if start is not None:
            sampler.start_after(2, start)
        return list(sampler)

    for world in (1, 2, 3):
        for rank in range(world):
            whole = rank_keys(world, rank)
            for batches in (0, 1, 3):  # batches of 2 per rank already trained on
                assert rank_keys(world, rank, 2 * batches * world) == whole[2 * batches:]
    sampler = MultiTaskSampler([5, 4], num_samples=14, seed=3)
    sampler.start_after(0, 10)
    assert list(sampler)[0] == sampler.keys()[10]
    assert list(sampler) == sampler.keys()  # once only
    # a start that is no multiple of the world size (resumed on other processes): every rank
    # gets as many keys, and together they cover the rest of the epoch
    rest = [rank_keys(3, r, start=4) for r in range(3)]
    assert [len(r) for r in rest] == [4, 4, 4]
    epoch_keys = rank_keys(1, 0)  # 14 keys; 3 ranks take them padded to 15
    assert {k for r in rest for k in r} == set((epoch_keys + epoch_keys[:1])[4:])


def test_resumable_loader_counts_handed_out_batches_and_skips_them(synthetic):
    module, dm = build(synthetic)
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    loader.sampler.set_epoch(1)
    iterator = iter(loader)
    seen = [[m["id"] for m in next(iterator)["meta"]] for _ in range(2)]
    assert loader.state_dict() == {"epoch": 1, "batches": 2, "batch_size": 2, "num_replicas": 1}
    state = loader.state_dict()
    all_ids = [[m["id"] for m in batch["meta"]] for batch in loader]
    assert all_ids[:2] == seen and loader.state_dict()["batches"] == BATCHES_PER_EPOCH

    fresh = build(synthetic)[1].train_dataloader()
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(1)
    assert [[m["id"] for m in batch["meta"]] for batch in fresh] == all_ids[2:]
    assert fresh.state_dict()["batches"] == BATCHES_PER_EPOCH
    with pytest.raises(ValueError, match=r"missing \['num_replicas'\]"):
        fresh.load_state_dict({"epoch": 0, "batches": 1, "batch_size": 2})

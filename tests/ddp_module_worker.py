"""Worker for ``test_module_ddp.py``: a ``TPOModule`` under Lightning's DDP (gloo) or in one process.

Run as ``python tests/ddp_module_worker.py MODE DATA OUT DEVICES``, where ``DATA`` is a
:func:`~tpo.datamodules.make_synthetic_dataset` folder; Lightning starts the second process by
running this script again. Rank 0 writes ``OUT``.

- ``validate``: ``trainer.validate`` on a validation split with odd task counts (temporal 3,
  box 1, track 5, mask 2): with 2 processes and batches of 2 the box sample is on one rank only,
  the task counts per rank differ, and the sampler pads one repeat. ``OUT`` is JSON of the
  logged values.
- ``grads``: one training step; ``OUT`` (``torch.save``) holds every trainable parameter's
  gradient after DDP's all-reduce, i.e. what the optimizer would see, and the tasks of each
  process's batch. 2 processes with batches of ``BATCH`` see together exactly the batch of
  ``2 * BATCH`` that one process sees.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch

from tpo.datamodules import MultiTaskDataModule
from tpo.datamodules.datasets import MaskDataset, MomentDataset, RefDataset, TrackDataset
from tpo.datamodules.synthetic import SyntheticDataset
from tpo.module import TPOModule

BACKBONE = {"name": "tiny_llava", "kind": "llava", "hidden_size": 64, "num_layers": 2,
            "vision_hidden_size": 32, "vision_layers": 1}
HEADS = {
    "temporal": {"hidden_dim": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 2,
                 "dim_feedforward": 64, "dropout": 0.0},
    "box": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "track": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "mask": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "mlp_dim": 64},
}
VAL_COUNTS = {"temporal": 3, "box": 1, "track": 5, "mask": 2}
NUM_FRAMES = 4
BATCH = 4


def _datasets(data: SyntheticDataset, split: str, counts: dict[str, int] | None, sampling: str) -> dict:
    common = {"num_frames": NUM_FRAMES, "sampling": sampling}
    samples = {t: data.samples(t, split) for t in ("temporal", "box", "track", "mask")}
    if counts is not None:
        samples = {t: samples[t][:n] for t, n in counts.items()}
    return {
        "temporal": MomentDataset(samples["temporal"], os.path.join(data.root, "videos"), **common),
        "box": RefDataset(samples["box"]),
        "track": TrackDataset(samples["track"], **common),
        "mask": MaskDataset(samples["mask"], **common),
    }


def main(mode: str, root: str, out: str, devices: int) -> None:
    torch.set_num_threads(1)
    data = SyntheticDataset.load(root)
    torch.manual_seed(0)
    module = TPOModule(backbone=dict(BACKBONE), heads=HEADS, stage="stage3")
    trainer_options = {"accelerator": "cpu", "devices": devices, "logger": False,
                       "enable_checkpointing": False, "enable_progress_bar": False,
                       "enable_model_summary": False,
                       **({"strategy": "ddp"} if devices > 1 else {})}
    if mode == "validate":
        dm = MultiTaskDataModule(train=_datasets(data, "val", VAL_COUNTS, "uniform"),
                                 val=_datasets(data, "val", VAL_COUNTS, "uniform"),
                                 batch_size=2, backbone=module.backbone)
        trainer = L.Trainer(**trainer_options)
        (logged,) = trainer.validate(module, datamodule=dm, verbose=False)
        if trainer.global_rank == 0:
            Path(out).write_text(json.dumps({"world_size": trainer.world_size, "logged": logged}))
        return
    grads: dict[str, torch.Tensor] = {}
    tasks: list[list[str]] = []

    class KeepGradients(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            local = sorted(batch["targets"])
            if trainer.world_size > 1:
                gathered: list = [None] * trainer.world_size
                torch.distributed.all_gather_object(gathered, local)
                tasks.extend(gathered)
            else:
                tasks.append(local)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            grads.update({n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()
                          if p.grad is not None})

    dm = MultiTaskDataModule(train=_datasets(data, "train", None, "random"), batch_size=BATCH * 2 // devices,
                             backbone=module.backbone, samples_per_epoch=BATCH * 2, seed=3)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, callbacks=[KeepGradients()], **trainer_options)
    trainer.fit(module, datamodule=dm)
    if trainer.global_rank == 0:
        torch.save({"world_size": trainer.world_size, "grads": grads, "tasks": tasks}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

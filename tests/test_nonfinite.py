"""A NaN training loss stops training (after a checkpoint) or, if asked, skips the batch."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from lightning import Callback, Trainer, seed_everything
from test_module import SMALL_HEADS

from tpo.backbones.tiny import tiny_llava
from tpo.callbacks import NonFiniteLossError
from tpo.datamodules import MultiTaskDataModule, make_synthetic_dataset
from tpo.module import TPOModule

BAD_STEP = 2


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, n_videos=8, size=32, num_frames=4, seed=2)
    return root


class Weights(Callback):
    """The trainable weights at the start of every training batch, by global step."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.at[trainer.global_step] = {
            k: v.detach().clone() for k, v in pl_module.named_parameters() if v.requires_grad}


def poison_box_giou(module: TPOModule) -> list[int]:
    """From global step BAD_STEP on, the first batch with box samples gets a NaN ``loss_giou``;
    returns the list of steps it was poisoned at."""
    head, poisoned = module.heads["box"], []
    original = head.loss

    def loss(output, targets, **kwargs):
        terms = original(output, targets, **kwargs)
        if module.global_step >= BAD_STEP and not poisoned:
            poisoned.append(module.global_step)
            terms["loss_giou"] = terms["loss_giou"] * float("nan")
        return terms

    head.loss = loss
    return poisoned


def fit(root, tmp_path, nonfinite: str, max_steps: int = 4):
    seed_everything(0)
    module = TPOModule(backbone=tiny_llava("llava"), heads=SMALL_HEADS, stage="stage3",
                       learning_rates={"heads": 1e-3}, schedule_steps=max_steps,
                       nonfinite=nonfinite)
    poisoned = poison_box_giou(module)
    dm = MultiTaskDataModule.from_synthetic(root, backbone=module.backbone,
                                            tasks=("temporal", "box"), batch_size=2,
                                            num_frames=4, seed=0)
    weights = Weights()
    trainer = Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=tmp_path, callbacks=[weights])
    return module, trainer, dm, weights, poisoned


@pytest.mark.slow
def test_nan_stops_training_naming_the_term_after_saving_the_weights(synthetic, tmp_path):
    module, trainer, dm, weights, poisoned = fit(synthetic, tmp_path, "stop")
    with pytest.raises(NonFiniteLossError, match=r"box/loss_giou") as info:
        trainer.fit(module, dm)
    (step,) = poisoned
    message = str(info.value)
    assert f"at step {step}" in message and info.value.terms == ["box/loss_giou"]
    path = info.value.checkpoint
    assert str(path) in message and path.is_file()
    assert path.parent == tmp_path / "checkpoints"  # beside the ModelCheckpoint files
    assert trainer.global_step == step  # no update after the bad batch
    state = torch.load(path, weights_only=False)["state_dict"]
    before = weights.at[step]
    for name, value in before.items():
        assert torch.isfinite(state[name]).all(), name
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)
    if step > 0:  # the weights did train before the bad step: the checkpoint is not the start
        assert any(not torch.equal(weights.at[0][n], before[n]) for n in before)


@pytest.mark.slow
def test_nan_batch_is_skipped_when_asked(synthetic, tmp_path, caplog):
    module, trainer, dm, weights, poisoned = fit(synthetic, tmp_path, "skip", max_steps=5)
    with caplog.at_level(logging.WARNING, logger="tpo.callbacks"):
        trainer.fit(module, dm)
    (step,) = poisoned
    assert module.nonfinite_skipped == 1
    assert trainer.global_step == 5  # training went on to the end
    warned = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warned) == 1 and "box/loss_giou" in warned[0] and f"at step {step}" in warned[0]
    # the skipped batch changed nothing; the batch after it trained
    for name, value in weights.at[step].items():
        torch.testing.assert_close(weights.at[step + 1][name], value, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(weights.at[step + 1][n], weights.at[step + 2][n])
               for n in weights.at[step])
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert float(trainer.callback_metrics["train/nonfinite_skipped"]) == 1


def test_nonfinite_option_lists_the_choices():
    with pytest.raises(ValueError, match=r"nonfinite: expected one of \['stop', 'skip'\]"):
        TPOModule(backbone=tiny_llava("llava"), heads=SMALL_HEADS, nonfinite="ignore")


DDP_WORKER = '''
"""2-process DDP fit; only rank 1 sees NaN box losses: at step 1 (skipped), then at step 3 with
nonfinite switched to "stop". Each rank writes what it saw to <out>/rank<r>.json."""
import json, sys
import torch
from lightning import Callback, Trainer, seed_everything
sys.path.insert(0, sys.argv[3])
from test_module import SMALL_HEADS
from tpo.backbones.tiny import tiny_llava
from tpo.datamodules import MultiTaskDataModule
from tpo.callbacks import NonFiniteLossError
from tpo.module import TPOModule

torch.set_num_threads(1)
data, out = sys.argv[1], sys.argv[2]
seed_everything(0)
module = TPOModule(backbone=tiny_llava("llava"), heads=SMALL_HEADS, stage="stage3",
                   schedule_steps=6, nonfinite="skip")
original = module.heads["box"].loss

def loss(output, targets, **kwargs):
    terms = original(output, targets, **kwargs)
    if module.global_step in (1, 3) and module.global_rank == 1:
        terms["loss_giou"] = terms["loss_giou"] * float("nan")
    return terms

module.heads["box"].loss = loss
sums = {}

class Watch(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sums[trainer.global_step] = sum(float(p.double().sum()) for p in pl_module.parameters())
        if trainer.global_step == 3:
            pl_module.nonfinite_callback.mode = "stop"

dm = MultiTaskDataModule.from_synthetic(data, backbone=module.backbone, tasks=("box",),
                                        batch_size=2, num_frames=4, seed=0)
trainer = Trainer(max_steps=6, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                  enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                  default_root_dir=out, callbacks=[Watch()])
result = {}
try:
    trainer.fit(module, dm)
except NonFiniteLossError as err:
    state = torch.load(err.checkpoint, weights_only=False)["state_dict"]
    result = {"message": str(err), "terms": err.terms, "checkpoint": str(err.checkpoint),
              "checkpoint_sum": sum(float(v.double().sum()) for k, v in state.items()
                                    if k in dict(module.named_parameters()))}
result.update(step=trainer.global_step, skipped=module.nonfinite_skipped, sums=sums)
with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
    json.dump(result, f)
'''


@pytest.mark.slow
def test_ddp_processes_agree_to_skip_and_to_stop(synthetic, tmp_path):
    """Two DDP fits cannot share a pytest process: the fit runs in a subprocess."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "worker.py").write_text(DDP_WORKER)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "worker.py"), str(synthetic), str(tmp_path),
         str(Path(__file__).parent)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["skipped"] for r in ranks] == [1, 1]  # both skipped the batch only rank 1 saw
    assert [r["step"] for r in ranks] == [3, 3]  # both stopped at the second bad batch
    assert ranks[1]["terms"] == ["box/loss_giou"] and "box/loss_giou" in ranks[1]["message"]
    assert ranks[0]["terms"] == [] and "another process" in ranks[0]["message"]
    assert ranks[0]["checkpoint"] == ranks[1]["checkpoint"]
    assert Path(ranks[0]["checkpoint"]).is_file()
    for r in ranks:
        assert r["sums"]["1"] == r["sums"]["2"] != r["sums"]["3"]  # step 1 skipped, step 2 trained
        assert r["sums"] == ranks[0]["sums"]  # the ranks stayed in sync
        assert r["checkpoint_sum"] == pytest.approx(r["sums"]["3"], rel=1e-12)

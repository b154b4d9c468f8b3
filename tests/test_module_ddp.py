"""TPOModule under 2-process DDP (gloo) equals one process: metrics of a validation split with
odd counts and a task on one rank only, and the gradients of a training step.

Each run is its own subprocess (Lightning starts the second process; two DDP runs cannot share
one pytest process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tpo.datamodules import make_synthetic_dataset

WORKER = Path(__file__).with_name("ddp_module_worker.py")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_data")
    make_synthetic_dataset(root, n_videos=12, size=32, num_frames=8, seed=5)
    return root


def run(mode: str, data: Path, out: Path, devices: int) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(WORKER), mode, str(data), str(out), str(devices)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=out.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
def test_ddp_validation_with_a_task_on_one_rank_and_odd_counts_equals_one_process(synthetic, tmp_path):
    logged = {}
    for devices in (2, 1):
        out = tmp_path / f"validate{devices}.json"
        run("validate", synthetic, out, devices)
        result = json.loads(out.read_text())
        assert result["world_size"] == devices
        logged[devices] = result["logged"]
    keys = [k for k in logged[1] if k.startswith(("val/", "val_generated/")) and k != "val/lm_loss"]
    assert {"val/temporal/R1@0.5", "val/box/acc@0.5", "val/track/success", "val/mask/J&F",
            "val/assign_acc", "val_generated/box/acc@0.5"} <= set(keys)
    assert set(keys) <= set(logged[2])
    for key in keys:  # means of float32 scores summed per process, then across: rounding only
        assert logged[2][key] == pytest.approx(logged[1][key], rel=1e-6, abs=1e-7), key


@pytest.mark.slow
def test_ddp_gradients_equal_one_process_on_the_union_batch(synthetic, tmp_path):
    grads, tasks = {}, {}
    for devices in (2, 1):
        out = tmp_path / f"grads{devices}.pt"
        run("grads", synthetic, out, devices)
        result = torch.load(out, weights_only=True)
        assert result["world_size"] == devices
        grads[devices], tasks[devices] = result["grads"], result["tasks"]
    (rank0, rank1), (union,) = tasks[2], tasks[1]
    assert sorted(set(rank0) | set(rank1)) == union == ["box", "mask", "temporal", "track"]
    assert set(rank0) ^ set(rank1)  # a task on one process only gets its whole gradient
    assert set(grads[2]) == set(grads[1])
    heads = [n for n in grads[1] if n.startswith("heads.")]
    assert {n.split(".")[1] for n in heads} == {"temporal", "box", "track", "mask"}
    assert any(n.startswith("backbone.task_tokens.") for n in grads[1])
    for name, expected in grads[1].items():  # float32 rounding of sums taken in another order
        error = (grads[2][name] - expected).abs().max()
        assert error <= 1e-6 * max(1.0, float(expected.abs().max())), (name, float(error))

"""`tpo fit/validate` through LightningCLI on the demo config, in 2 processes (gloo) and in one.

Each CLI run is its own subprocess: two DDP runs cannot share one pytest process.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tpo.datamodules import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SMALLER = """
model:
  heads:
    temporal: {hidden_dim: 32, num_heads: 4, num_encoder_layers: 1, num_decoder_layers: 1,
               dim_feedforward: 64, dropout: 0.0}
    box: {hidden_dim: 32, num_heads: 4, num_layers: 1, dim_feedforward: 64}
    track: {hidden_dim: 32, num_heads: 4, num_layers: 1, dim_feedforward: 64}
    mask: {hidden_dim: 32, num_heads: 4, num_layers: 1, mlp_dim: 64, high_res_dims: [3, 3]}
data:
  batch_size: 4
"""


def tpo(args: list[str], data: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TPO_DEMO_DATA": str(data), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "tpo.cli", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def logged(folder: Path) -> dict[str, float]:
    (path,) = folder.rglob("metrics.csv")
    values: dict[str, float] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            values.update({k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"})
    return values


@pytest.mark.slow
def test_ddp_fit_then_validation_equals_a_single_process_evaluation(tmp_path):
    data = tmp_path / "data"
    make_synthetic_dataset(data, n_videos=20, size=32, num_frames=8, seed=1)
    (tmp_path / "smaller.yaml").write_text(SMALLER)
    configs = ["--config", str(ROOT / "configs" / "demo.yaml"), "--config", str(tmp_path / "smaller.yaml")]
    tpo(["fit", *configs, "--trainer.devices=2", "--trainer.strategy=ddp",
         "--trainer.max_time=null", "--trainer.max_steps=3", "--trainer.limit_val_batches=0",
         f"--trainer.default_root_dir={tmp_path / 'fit'}", "--trainer.logger=false"], data, tmp_path)
    (checkpoint,) = (tmp_path / "fit").rglob("*.ckpt")
    results = {}
    for devices in (2, 1):
        out = tmp_path / f"validate{devices}"
        tpo(["validate", *configs, f"--trainer.devices={devices}",
             *(["--trainer.strategy=ddp"] if devices == 2 else []),
             "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={out}",
             f"--ckpt_path={checkpoint}"], data, tmp_path)
        results[devices] = logged(out)
    keys = [k for k in results[1] if k.startswith(("val/", "val_generated/"))]
    assert {"val/temporal/R1@0.5", "val/box/acc@0.5", "val/track/success", "val/mask/J&F"} <= set(keys)
    for key in keys:
        assert results[2][key] == pytest.approx(results[1][key], abs=1e-6), key

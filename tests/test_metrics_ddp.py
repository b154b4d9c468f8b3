"""Metric states sync over a 2-process gloo group (a subprocess: one DDP init per process)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_metrics_worker.py")


@pytest.mark.slow
def test_two_process_gloo_equals_single_process(tmp_path):
    out = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2

    spec = importlib.util.spec_from_file_location("ddp_metrics_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    single = worker.run(0, 1)
    assert set(ddp["metrics"]) == set(single)
    assert len(single) > 20
    for key, value in single.items():
        assert ddp["metrics"][key] == pytest.approx(value, abs=1e-12), key
    # the shards differ, so a missing sync would change the numbers
    assert worker.run(0, 2) != single

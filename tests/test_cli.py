"""The `tpo` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys


def test_tpo_demo_runs_offline_and_writes_its_summary(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tpo.cli", "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "", "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "pipeline.json").read_text())
    for task in ("temporal", "box", "track", "mask"):
        assert summary[task]["task_embedding_shape"] == [1, 64]
        assert summary[task]["grad_norm_on_learnable_embedding"] > 0
    assert summary["visual_tokens_shape"] == [4, 8, 16, 64]
    assert (tmp_path / "moving_square.mp4").stat().st_size > 0


def test_tpo_without_a_subcommand_prints_help(capsys):
    from tpo.cli import main

    assert main([]) == 0
    assert "demo" in capsys.readouterr().out

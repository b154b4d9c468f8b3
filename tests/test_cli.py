"""The `tpo` command as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--modality-adaptive", "--no-progress"]],
                         ids=["plain", "modality_adaptive"])
def test_tpo_demo_runs_offline_and_writes_metrics_and_plots(tmp_path, extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "tpo.cli", "demo", "--out", str(tmp_path), "--minutes", "0.4",
         "--videos", "24", "--batch-size", "8", *extra],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for task, name in (("temporal", "R1@0.5"), ("box", "Acc@0.5"), ("track", "success AUC"),
                       ("mask", "J&F"), ("assignment", "accuracy")):
        row = metrics[task][name]
        assert 0.0 <= row["value"] <= 1.0 and 0.0 <= row["chance"] <= 1.0, (task, row)
    assert metrics["language"]["train loss first→last"]["value"] > 0
    for plot in ("losses.png", "temporal_timeline.png", "boxes.png", "tracking.png", "masks.png"):
        assert (tmp_path / plot).stat().st_size > 1000, plot
    assert "held-out metrics" in result.stdout and "chance" in result.stdout
    progress_lines = re.findall(r"^fit: second \d+/\d+ \(\d+%\).*loss", result.stderr, re.MULTILINE)
    assert len(progress_lines) >= (0 if "--no-progress" in extra else 3), result.stderr[-2000:]
    history = metrics["language"]["train loss first→last"]
    assert history["value"] < history["chance"]  # the language loss falls while it trains
    for task, name in (("temporal", "R1@0.5"), ("box", "acc@0.5"), ("track", "success"),
                       ("mask", "J&F")):  # the saved model answered every held-out question
        assert 0.0 <= metrics[task][f"{name} (predictor)"]["value"] <= 1.0, task
        assert metrics[task]["task called (predictor)"]["chance"] is None
    from tpo.predict import Predictor

    predictor = Predictor.from_pretrained(tmp_path / "model")
    answer = predictor.predict(str(tmp_path / "data" / "videos" / "clip00023.mp4"),
                               "When is the red circle visible?")
    assert isinstance(answer.text, str) and len(answer.timestamps) == 8  # a short run may answer ""
    assert answer.task is None or answer.task in ("temporal", "box", "track", "mask")


def test_tpo_without_a_subcommand_prints_help(capsys):
    from tpo.cli import main

    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize("configs", [
    ["demo.yaml"],
    ["backbones/llava_onevision.yaml", "tasks/all.yaml", "stage1.yaml"],
    ["backbones/videochat.yaml", "tasks/all.yaml", "stage2.yaml"],
    ["backbones/tiny.yaml", "tasks/temporal.yaml", "stage3.yaml"],
])
def test_configs_parse_with_the_lightning_cli(configs, capsys):
    from tpo.cli import main

    args = ["fit", *[a for c in configs for a in ("--config", str(ROOT / "configs" / c))], "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model:" in printed and "stage:" in printed and "trainer:" in printed


def test_demo_config_trains_the_model_tpo_demo_trains():
    from omegaconf import OmegaConf

    from tpo.demo import DEMO_MODEL

    model = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "demo.yaml").model)
    model.pop("schedule_seconds")
    assert model == DEMO_MODEL

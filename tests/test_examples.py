"""The examples as users run them: each script with ``--out``, each notebook through a kernel.

Each must finish without error, offline, and leave its outputs (files, figures) behind.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
OFFLINE = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TIMEOUT_S = 600

#: What each example leaves in its output folder, and what it prints (scripts) or how many figures
#: it shows (notebooks).
OUTPUTS = {
    "add_heads_to_your_model.py": (["clip.mp4"], ["loss first -> last", "predicted"]),
    "train_on_your_videos.py": (
        ["my_videos/charades_sta_train.txt", "my_videos/durations.csv", "my_videos/videos/video000.mp4",
         "runs/lightning_logs/version_0/checkpoints/last.ckpt", "runs/lightning_logs/version_1/metrics.csv"],
        ["training loss, first -> last", "held-out val/temporal/R1@0.5"],
    ),
    "metrics_in_a_notebook.ipynb": (
        ["qvhighlights_val_preds_2s.jsonl", "charades_sta_test.txt", "charades_preds.jsonl",
         "davis/ImageSets/2017/val.txt", "davis_results/shapes0/00000.png",
         "got10k/val/list.txt", "steady/got10k/GOT-10k_Val_000001/GOT-10k_Val_000001_001.txt",
         "qvhighlights_timelines.png", "davis_masks.png", "tracks.png"],
        7,
    ),
    "predict.ipynb": (["model/tpo_predictor.json", "when.png", "where.png", "track.png", "segment.png"], 4),
}


def test_every_example_is_tested_and_notebooks_are_committed_without_outputs():
    import nbformat

    assert {p.name for p in SCRIPTS + NOTEBOOKS} == set(OUTPUTS)
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_runs_offline_and_writes_its_outputs(script, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(script), "--out", str(out)], cwd=tmp_path,
                            env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    files, printed = OUTPUTS[script.name]
    for name in files:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for text in printed:
        assert text in result.stdout, text


def _python3_kernel(prefix: Path, monkeypatch) -> str:
    """Install a ``python3`` kernelspec that runs this interpreter into ``prefix`` and put it first
    on the Jupyter path (a kernelspec found elsewhere might start another Python)."""
    from ipykernel.kernelspec import install

    install(user=False, prefix=str(prefix), kernel_name="python3")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
        [str(prefix / "share" / "jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])]))
    return "python3"


def _figures(notebook) -> list[bytes]:
    import base64

    return [base64.b64decode(output["data"]["image/png"]) for cell in notebook.cells
            if cell.cell_type == "code" for output in cell.outputs if "image/png" in output.get("data", {})]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_offline_and_shows_its_figures(path, tmp_path, monkeypatch):
    import nbformat
    import numpy as np
    from nbclient import NotebookClient
    from PIL import Image

    kernel = _python3_kernel(tmp_path / "jupyter", monkeypatch)
    out = tmp_path / "out"
    for key, value in {**OFFLINE, "TPO_EXAMPLE_OUT": str(out)}.items():
        monkeypatch.setenv(key, value)
    before = sorted(EXAMPLES.iterdir())
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name=kernel,
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()  # raises on a failing cell

    assert sorted(EXAMPLES.iterdir()) == before, "the notebook wrote into examples/"
    files, num_figures = OUTPUTS[path.name]
    for name in files:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    figures = _figures(notebook)
    assert len(figures) >= num_figures
    for png in figures:  # something is drawn: not one flat colour
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 5

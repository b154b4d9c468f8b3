"""Smoke tests of ``benchmarks/*.py``: each script runs as a subprocess at tiny sizes, exits 0
and prints its headline lines ``name: value (target ...)`` with float values.

The figures themselves are not checked (tiny sizes on a shared CI machine say nothing about
speed); what is checked is that the scripts still run against the current library, offline and
without the official evaluators' checkouts.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = re.compile(r"^(\w+): (\S+) \(target [^)]*\)$")
TIMEOUT_S = 300


class BenchmarkRun:
    """``python benchmarks/<script> *args`` started now (one thread, offline, this checkout),
    stdout and stderr to files in ``folder``; :meth:`stdout` waits for it."""

    def __init__(self, script: str, args: list, folder: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        self.script = script
        self.out, self.err = folder / f"{script}.stdout", folder / f"{script}.stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
                cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            )

    def stdout(self) -> str:
        try:
            code = self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            code = f"nothing: killed after {TIMEOUT_S} s"
        stdout, stderr = self.out.read_text(), self.err.read_text()
        assert code == 0, (f"benchmarks/{self.script} exited {code}\n--- stdout\n{stdout[-4000:]}"
                           f"\n--- stderr\n{stderr[-4000:]}")
        return stdout

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _write_qvhighlights(folder: Path, queries: int = 6) -> None:
    """A tiny ground truth + submission pair in the public QVHighlights format."""
    folder.mkdir(parents=True, exist_ok=True)
    gt, sub = [], []
    for q in range(queries):
        duration, start = 30 + 10 * q, 2 * q
        clips = list(range(start // 2, start // 2 + 4))
        gt.append({"qid": q, "query": f"query {q}", "duration": duration, "vid": f"v{q}",
                   "relevant_windows": [[start, start + 8]], "relevant_clip_ids": clips,
                   "saliency_scores": [[(c + a) % 5 for a in range(3)] for c in clips]})
        saliency = [((7 * c + q) % 11) / 10 for c in range(duration // 2)]
        sub.append({"qid": q, "query": f"query {q}", "vid": f"v{q}",
                    "pred_relevant_windows": [[start + 1, start + 9, 0.9], [0, 10, 0.4]],
                    "pred_saliency_scores": saliency})
    (folder / "highlight_val_release.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gt))
    with gzip.open(folder / "sample_val_preds.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in sub)


def _untrained_demo(root: Path) -> None:
    """What ``tpo demo`` writes, untrained and tiny: a Predictor folder and a synthetic dataset."""
    import torch

    from tpo.datamodules import make_synthetic_dataset
    from tpo.demo import DEMO_DATA, DEMO_MODEL
    from tpo.module import TPOModule
    from tpo.predict import Predictor

    torch.manual_seed(0)
    Predictor(TPOModule(**DEMO_MODEL)).save_pretrained(root / "model")
    make_synthetic_dataset(root / "data", n_videos=10, seed=0, **DEMO_DATA)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """The selected tests' benchmark runs, all started at once (they take seconds each, mostly
    imports, and run side by side on the cores); ``test_<name>_benchmark`` reads ``runs[name]``."""
    tmp = tmp_path_factory.mktemp("benchmarks")
    selected = {item.name for item in request.session.items}
    specs = {
        "data": ["--clips", 2, "--frames", 8, "--size", 32, "--sample", 4, "--rounds", 1],
        "heads": ["--hidden-size", 64, "--layers", 1, "--vocab-size", 512, "--seq-len", 72,
                  "--steps", 1, "--warmup", 0, "--device", "cpu"],
        "scale": ["--tiny", "--repeats", 1, "--new-tokens", 3],
        # no official checkouts at these paths: our part runs, the comparisons are skipped
        "metrics": ["--qvhighlights", tmp / "qv", "--repeats", 1, "--frames", 3, "--height", 48,
                    "--width", 64, "--folder-sequences", 2, "--folder-frames", 4, "--tracks", 2,
                    "--track-frames", 5, "--moment-detr", tmp / "no_moment_detr",
                    "--davis", tmp / "no_davis", "--got10k", tmp / "no_got10k"],
    }
    _write_qvhighlights(tmp / "qv")
    started: dict[str, BenchmarkRun] = {}
    try:
        for name, args in specs.items():
            if f"test_{name}_benchmark" in selected:
                started[name] = BenchmarkRun(f"{name}.py", args, tmp)
        if "test_query_sensitivity_benchmark" in selected:
            _untrained_demo(tmp / "demo_out")  # here, while the others run
            started["query_sensitivity"] = BenchmarkRun(
                "query_sensitivity.py",
                [tmp / "demo_out" / "model", tmp / "demo_out" / "data", "--batches", 1], tmp)
        yield started
    finally:
        for run in started.values():
            run.kill()


def headlines(stdout: str, expected: list[str]) -> dict[str, float]:
    """The headline values of ``stdout``; fails unless every ``expected`` name has a float."""
    found = {}
    for line in stdout.splitlines():
        match = HEADLINE.match(line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    missing = [name for name in expected if name not in found]
    assert not missing, f"headline lines {missing} missing from:\n{stdout}"
    values = {}
    for name in expected:
        try:
            values[name] = float(found[name])
        except ValueError:
            pytest.fail(f"{name}: value {found[name]!r} is not a float in:\n{stdout}")
        assert math.isfinite(values[name]), f"{name}: {values[name]} in:\n{stdout}"
    return values


def test_headline_pattern():
    assert HEADLINE.match("heads_step_ratio: 1.07 (target <= 1.10)")
    assert HEADLINE.match("jf_ours_s: 0.0003 (target n/a)")
    assert not HEADLINE.match("raw decord: 349.9 clips/s")


@pytest.mark.slow
def test_data_benchmark(runs):
    out = runs["data"].stdout()
    values = headlines(out, ["datamodule_vs_decord_ratio", "datamodule_resize_vs_decord_ratio"])
    assert all(v > 0 for v in values.values())


@pytest.mark.slow
def test_heads_benchmark(runs):
    values = headlines(runs["heads"].stdout(), ["heads_step_ratio"])
    assert values["heads_step_ratio"] > 0


@pytest.mark.slow
def test_metrics_benchmark(runs):
    """Without the official checkouts: our timings, and the comparisons said to be skipped."""
    out = runs["metrics"].stdout()
    headlines(out, ["qvhighlights_ours_s", "jf_ours_s", "davis_eval_ours_s", "got10k_eval_ours_s"])
    assert "QVHighlights, 6 queries" in out
    assert "DAVIS folder, 2 sequences x 4 frames 48x64" in out
    assert "GOT-10k, 2 sequences x 5 frames" in out
    assert out.count("skipping the comparison") == 4, out
    assert "_speedup" not in out and "_identical" not in out


@pytest.mark.slow
def test_query_sensitivity_benchmark(runs):
    out = runs["query_sensitivity"].stdout()
    values = headlines(out, [f"query_sensitivity_ratio_{task}" for task in ("temporal", "box", "mask")])
    assert all(v > 0 for v in values.values())
    assert re.search(r"^track\s+n/a", out, re.M), out


@pytest.mark.slow
def test_scale_benchmark(runs):
    """Both backbones at tiny widths, checkpointing off and on: every figure per backbone and
    setting, the headlines, an export without vocabulary-sized tensors and a prediction that
    matches the model's own generate."""
    out = runs["scale"].stdout()
    ratios = ["scale_step_ratio", "scale_peak_memory_ratio", "predict_latency_ratio"]
    values = headlines(out, [*ratios, "scale_trainable_params", "scale_heads_export_mb",
                             "scale_heads_export_vocab_tables"])
    assert values["scale_heads_export_vocab_tables"] == 0
    assert all(values[k] > 0 for k in ratios)
    for backbone in ("llava_onevision", "qwen2_5_vl"):
        for setting in ("off", "on"):
            for figure in ("scale_step_ratio", "scale_peak_memory_ratio"):
                assert re.search(rf"^{figure}_{backbone}_ckpt_{setting}: \d", out, re.M), out
    assert out.count("prompt ids equal") == out.count("answers equal") == 2, out

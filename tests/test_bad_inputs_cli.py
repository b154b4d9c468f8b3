"""Bad inputs through the real entry points (``tpo fit``, ``tpo eval``, ``tpo demo``): each fails
with a non-zero exit or an error naming the bad key, file or path, and leaves earlier outputs as
they were."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_module import SMALL_HEADS

from tpo.datamodules import make_synthetic_dataset

BACKBONE = {"name": "tiny_llava", "kind": "llava", "hidden_size": 64}


def tpo(*args: str) -> int:
    from tpo.cli import main

    return main(list(args))


# --------------------------------------------------------------------------------- tpo fit


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    make_synthetic_dataset(root / "data", n_videos=4, size=32, num_frames=4, seed=0)
    return root / "data"


def write_config(path: Path, data: Path, out: Path, *, model: dict | None = None, **top) -> Path:
    """A tiny box-only fit (one step) as ``path``; ``model`` / ``top`` replace or add keys."""
    box = {"format": "refcoco_flat", "path": str(data / "refs_train.json"), "media_root": str(data)}
    cfg = {"model": model or {"backbone": BACKBONE, "heads": {"box": SMALL_HEADS["box"]}, "stage": "stage3"},
           "data": {"train": {"box": box}, "batch_size": 2},
           "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 1, "logger": False,
                       "enable_checkpointing": False, "enable_progress_bar": False,
                       "enable_model_summary": False, "default_root_dir": str(out)}, **top}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("where, key, valid", [
    ("model", "hedas", "'heads'"),
    ("trainer", "plugin", "'plugins'"),
    ("top", "modle", "'model'"),
], ids=["model_heads", "trainer_plugins", "top_level"])
def test_misspelt_key_with_an_empty_mapping_fails_naming_it_and_the_valid_ones(
        tmp_path, data, capsys, where, key, valid):
    """jsonargparse drops a key without leaves (``model.hedas: {box: {}}``), which used to train
    default heads for every task; it is now a start-up error, before any model is built."""
    config = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out")
    cfg = yaml.safe_load(config.read_text())
    (cfg if where == "top" else cfg[where])[key] = {"box": {}}
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exit_info:
        tpo("fit", "--config", str(config))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    dotted = key if where == "top" else f"{where}.{key}"
    assert f"unknown key '{dotted}'" in err and valid in err and str(config) in err, err
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize("key", ["path", "media_root"])
def test_dataset_path_that_does_not_exist_fails_before_anything_is_built(tmp_path, data, key):
    config = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out")
    missing = tmp_path / "no_such_dir" / "refs.json"
    message = rf"data\.train\.box\.{key}: '{re.escape(str(missing))}' does not exist"
    with pytest.raises(FileNotFoundError, match=message):
        tpo("fit", "--config", str(config), f"--data.train.box.{key}={missing}")
    assert not (tmp_path / "out").exists()


def test_relative_dataset_path_names_the_working_directory(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out")
    message = rf"'data/refs\.json' does not exist \(relative to {re.escape(str(tmp_path))}"
    with pytest.raises(FileNotFoundError, match=message):
        tpo("fit", "--config", str(config), "--data.train.box.path=data/refs.json")


def test_run_failing_at_its_first_batch_keeps_the_previous_config(tmp_path, data):
    """The config is written to a partial file and moved onto ``config.yaml`` only after the
    first batch; a run failing before that leaves the previous run's file untouched."""
    out = tmp_path / "out"
    out.mkdir()
    previous = "# the previous run's config\nmodel: {}\n"
    (out / "config.yaml").write_text(previous)
    empty_media = tmp_path / "empty_media"  # exists, but holds none of the images
    empty_media.mkdir()
    config = write_config(tmp_path / "cfg.yaml", data, out)
    with pytest.raises(FileNotFoundError, match=r"empty_media/images/.*not found"):
        tpo("fit", "--config", str(config), f"--data.train.box.media_root={empty_media}")
    assert (out / "config.yaml").read_text() == previous
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # no partial file left


def test_successful_run_replaces_the_config_after_its_first_step(tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("# the previous run's config\n")
    config = write_config(tmp_path / "cfg.yaml", data, out)
    tpo("fit", "--config", str(config))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 1 and saved["model"]["heads"] == {"box": SMALL_HEADS["box"]}
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


# --------------------------------------------------------------------------------- tpo eval

GT = [{"qid": 0, "query": "a red circle", "vid": "v0", "duration": 10, "relevant_windows": [[2, 6]],
       "relevant_clip_ids": [1, 2], "saliency_scores": [[4, 4, 4], [3, 3, 3]]}]
SUBMISSION = [{"qid": 0, "query": "a red circle", "vid": "v0",
               "pred_relevant_windows": [[2, 6, 0.9]], "pred_saliency_scores": [0.0, 1.0, 1.0, 0.0, 0.0]}]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    gt, sub = tmp_path / "gt.jsonl", tmp_path / "sub.jsonl.gz"
    gt.write_text("".join(json.dumps(r) + "\n" for r in GT))
    with gzip.open(sub, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in SUBMISSION)
    return {"gt": gt, "sub": sub}


def eval_fails(capsys, *args: str) -> str:
    """Run ``tpo eval`` in this process; it must exit 1 with one ``error:`` line on stderr."""
    assert tpo("eval", *args) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("tpo eval: error: "), captured
    return captured.err


@pytest.mark.slow  # a fresh interpreter imports torch: seconds on a loaded machine
def test_eval_missing_submission_is_a_clear_error_without_traceback(tmp_path, files):
    missing = tmp_path / "preds.jsonl"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "tpo.cli", "eval", "qvhighlights", "--submission", str(missing),
         "--gt", str(files["gt"])], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert f"--submission {missing}: no such file" in result.stderr


@pytest.mark.parametrize("damage, hint", [
    (lambda raw: b"not gzip at all\n", "BadGzipFile"),
    (lambda raw: raw[: len(raw) // 2], "EOFError"),
], ids=["not_gzip", "truncated"])
def test_eval_corrupt_gzip_names_the_file(capsys, files, damage, hint):
    files["sub"].write_bytes(damage(files["sub"].read_bytes()))
    err = eval_fails(capsys, "qvhighlights", "--submission", str(files["sub"]), "--gt", str(files["gt"]))
    assert f"--submission {files['sub']}: cannot read it: {hint}" in err and "gzip" in err, err


def test_eval_gzip_file_without_gz_suffix_says_so(capsys, files, tmp_path):
    plain_name = tmp_path / "sub.jsonl"
    plain_name.write_bytes(files["sub"].read_bytes())
    err = eval_fails(capsys, "qvhighlights", "--submission", str(plain_name), "--gt", str(files["gt"]))
    assert str(plain_name) in err and "gzip-compressed: name it *.gz" in err, err


def test_eval_missing_or_broken_ground_truth_names_it(capsys, files, tmp_path):
    txt = tmp_path / "charades_sta_test.txt"
    err = eval_fails(capsys, "charades", "--submission", str(files["sub"]), "--gt", str(txt))
    assert f"--gt {txt}: no such file" in err
    txt.write_text("v0 1.0 2.0 no separator\n")
    err = eval_fails(capsys, "charades", "--submission", str(files["sub"]), "--gt", str(txt))
    assert f"{txt}:1: expected '<vid> <start> <end>##<sentence>'" in err  # formats.charades_sta
    err = eval_fails(capsys, "qvhighlights", "--submission", str(files["sub"]), "--gt", str(tmp_path))
    assert f"--gt {tmp_path}: is a directory" in err


def test_eval_rows_of_the_wrong_shape_name_both_files(capsys, files):
    files["gt"].write_text("[1, 2]\n")
    err = eval_fails(capsys, "qvhighlights", "--submission", str(files["sub"]), "--gt", str(files["gt"]))
    assert f"--submission {files['sub']} against --gt {files['gt']}: " in err, err


def test_eval_save_into_a_missing_folder_fails_before_scoring(capsys, files, tmp_path):
    save = tmp_path / "no_such_dir" / "scores.json"
    err = eval_fails(capsys, "qvhighlights", "--submission", str(files["sub"]), "--gt", str(files["gt"]),
                     "--save", str(save))
    assert f"--save {save}: folder {save.parent} does not exist" in err
    assert tpo("eval", "qvhighlights", "--submission", str(files["sub"]), "--gt", str(files["gt"]),
               "--save", str(tmp_path / "scores.json")) == 0
    assert json.loads((tmp_path / "scores.json").read_text()) == json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.jsonl", "scores.json", "sub.jsonl.gz"]


# --------------------------------------------------------------------------------- tpo demo


def test_demo_refuses_a_folder_holding_other_files(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        tpo("demo", "--out", str(out), "--minutes", "0.01", "--videos", "4")
    assert exit_info.value.code == 2
    assert "holds ['thesis.tex'], which tpo demo does not write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert (out / "thesis.tex").read_text() == "precious"


def previous_demo(out: Path) -> None:
    """What an earlier, finished demo left: its data and its metrics."""
    make_synthetic_dataset(out / "data", n_videos=2, size=16, num_frames=4, seed=0)
    (out / "metrics.json").write_text('{"old": true}')
    (out / "losses.png").write_bytes(b"old plot")


def test_interrupted_demo_leaves_the_previous_output_as_it_was(tmp_path, monkeypatch):
    from tpo import datamodules

    out = tmp_path / "demo_out"
    out.mkdir()
    (out / "metrics.json").write_text('{"old": true}')
    (out / "losses.png").write_bytes(b"old plot")

    def interrupted(root, **kwargs):  # the data half written, then Ctrl-C
        Path(root).mkdir(parents=True)
        (Path(root) / "qvhighlights_train.jsonl").write_text('{"qid": 0}\n')
        raise KeyboardInterrupt

    monkeypatch.setattr(datamodules, "make_synthetic_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tpo("demo", "--out", str(out), "--minutes", "0.01", "--videos", "4", "--no-progress")
    assert sorted(p.name for p in out.iterdir()) == ["losses.png", "metrics.json"]
    assert (out / "metrics.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_out"]  # no partial folder


def test_finished_demo_replaces_its_output_folder_in_one_rename(tmp_path, monkeypatch):
    from tpo import demo

    out = tmp_path / "demo_out"
    previous_demo(out)
    seen = {}

    def finished(work, **kwargs):  # the demo's body, writing into the partial folder
        seen["work"], seen["data"] = work, (work / "data" / "synthetic.json").is_file()
        assert not (out / "model").exists()  # nothing reaches ``out`` while the run is going
        (work / "model").mkdir()
        (work / "metrics.json").write_text('{"new": true}')
        return {"new": True}

    monkeypatch.setattr(demo, "_run_demo_in", finished)
    assert tpo("demo", "--out", str(out), "--no-progress") == 0
    assert seen["work"] == out.with_name(".demo_out.partial") and seen["data"]  # data reused
    assert sorted(p.name for p in out.iterdir()) == ["data", "metrics.json", "model"]  # old plot gone
    assert (out / "metrics.json").read_text() == '{"new": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_out"]

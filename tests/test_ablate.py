"""``tpo ablate``: the textual parsers, variant and task choices, the results' schema, table and
chart, and resuming an interrupted ablation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tpo.ablate import (
    ablate,
    ablate_main,
    finished_or_run,
    markdown_table,
    parse_tasks,
    parse_variants,
    plot_ablation,
    read_textual_answer,
    run_dir,
    run_signature,
    summarise,
    variant_run,
)
from tpo.answer import Answer
from tpo.tasks import get_task

VIDEO_META = {"duration": 3.0, "frame_size": (100, 200), "timestamps": np.arange(4) * 0.75}


# ---------------------------------------------------------------------------------------- parsers
def test_a_temporal_answer_reads_as_windows_in_seconds_ranked_in_the_order_written():
    task = get_task("temporal")
    prediction = task.parse_textual_answer("from 1.0 to 2.5 seconds", VIDEO_META)
    assert prediction.windows.tolist() == [[1.0, 2.5, 1.0]]
    prediction = task.parse_textual_answer(
        "from 2 to 1 seconds; From 0.5 to 9.0 seconds, from 0.2 to 0.4 second", VIDEO_META)
    assert prediction.windows[:, :2].numpy() == pytest.approx(np.array([[0.5, 3.0], [0.2, 0.4]]))  # clamped
    assert prediction.windows[:, 2].tolist() == [1.0, 0.5]


def test_a_box_answer_reads_as_xyxy_pixels_of_the_frame():
    prediction = get_task("box").parse_textual_answer("[0.10, 0.20, 0.50, 0.60]", VIDEO_META)
    assert prediction.box_xyxy.tolist() == pytest.approx([20.0, 20.0, 100.0, 60.0])
    prediction = get_task("box").parse_textual_answer("It is at [0.5, 0.5, 1.5, 0.9] now.", VIDEO_META)
    assert prediction.box_xyxy.tolist() == pytest.approx([100.0, 50.0, 200.0, 90.0])  # clipped to 1


def test_a_track_answer_reads_as_one_xywh_box_per_frame_read():
    text = "[0.10, 0.20, 0.50, 0.60] [0.00, 0.00, 0.00, 0.00] [0.6, 0.2, 0.1, 0.3]"
    prediction = get_task("track").parse_textual_answer(text, VIDEO_META)
    expected = np.array([[20.0, 20.0, 80.0, 40.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert prediction.boxes_xywh.numpy() == pytest.approx(expected)  # out of order, missing
    assert prediction.visible.tolist() == [True, False, False, False]


@pytest.mark.parametrize("task", ["temporal", "box", "track"])
@pytest.mark.parametrize("text", ["", "I do not know.", "from a to b seconds", "[0.1, 0.2, 0.3]"])
def test_text_without_an_answer_is_a_miss(task, text):
    assert get_task(task).parse_textual_answer(text, VIDEO_META) is None


def test_a_box_with_its_corners_out_of_order_is_a_miss():
    assert get_task("box").parse_textual_answer("[0.50, 0.20, 0.10, 0.60]", VIDEO_META) is None


def test_parsing_the_textual_answer_gives_back_its_values_to_the_texts_rounding():
    rng = np.random.default_rng(0)
    windows = np.sort(rng.uniform(0, 3, size=(3, 2)), axis=1)
    temporal = get_task("temporal")
    parsed = temporal.parse_textual_answer(temporal.textual_answer(windows_s=windows), VIDEO_META)
    assert parsed.windows[:, :2].numpy() == pytest.approx(windows, abs=0.05 + 1e-6)
    height, width = VIDEO_META["frame_size"]
    scale = np.array([width, height, width, height])
    box = np.concatenate([np.sort(rng.uniform(0, 1, 2)), np.sort(rng.uniform(0, 1, 2))])[[0, 2, 1, 3]]
    parsed = get_task("box").parse_textual_answer(get_task("box").textual_answer(box=box), VIDEO_META)
    assert parsed.box_xyxy.numpy() == pytest.approx(box * scale, abs=0.005 * width + 1e-4)
    corners = np.sort(rng.uniform(0, 1, size=(4, 2, 2)), axis=1)  # (frame, low/high, x/y)
    boxes = corners.transpose(0, 2, 1).reshape(4, 4)[:, [0, 2, 1, 3]]  # x1, y1, x2, y2
    track = get_task("track")
    parsed = track.parse_textual_answer(track.textual_answer(boxes=boxes), VIDEO_META)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1) * scale
    assert parsed.boxes_xywh.numpy() == pytest.approx(xywh, abs=0.01 * width + 1e-4)


def test_masks_have_no_textual_form():
    mask = get_task("mask")
    assert not mask.textual_form and all(get_task(t).textual_form for t in ("temporal", "box", "track"))
    with pytest.raises(ValueError, match="'mask'.*no textual form"):
        mask.parse_textual_answer("[0.1, 0.2, 0.3, 0.4]", VIDEO_META)


def test_a_generated_text_becomes_the_answer_of_the_task_asked():
    item = {"task": "box", "meta": {"frame_size": (10, 10)}}
    answer = read_textual_answer(item, Answer(text="[0.10, 0.20, 0.50, 0.60]"))
    assert answer.task == "box" and answer.boxes.numpy() == pytest.approx(np.array([[1.0, 2.0, 5.0, 6.0]]))
    missed = read_textual_answer(item, Answer(text="a red circle"))
    assert missed.task is None and missed.prediction is None


# ---------------------------------------------------------------------------------------- choices
def test_tasks_and_variants_parse_with_defaults():
    assert parse_tasks(None) == ("temporal", "box", "track", "mask")
    assert parse_tasks(" box,temporal ") == ("box", "temporal")
    assert parse_variants(None, ("temporal",)) == ["tpo", "textual", "no_conversation", "query_words",
                                                   "no_scaffold"]
    assert parse_variants(None, ("temporal", "box"))[2:4] == ["single:temporal", "single:box"]
    assert parse_variants("tpo, single:box", ("temporal", "box")) == ["tpo", "single:box"]


@pytest.mark.parametrize(("variants", "tasks", "message"), [
    ("single:foo", "temporal", r"'single:foo'.*'foo' is not one of --tasks \['temporal'\]"),
    ("single:box", "temporal", r"'single:box'"),
    ("tpo,bogus", "temporal", r"'bogus': unknown; expected tpo, textual"),
    ("textual", "mask", r"'textual': none of --tasks \['mask'\] has a textual form"),
    ("tpo,tpo", "temporal", "twice"),
    ("tpo", "temporal,foo", r"--tasks 'temporal,foo': unknown \['foo'\]"),
])
def test_bad_variants_and_tasks_are_named(variants, tasks, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ablate_main(["--out", str(tmp_path / "abl"), "--variants", variants, "--tasks", tasks])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "abl").exists()  # refused before any work


def test_each_variant_changes_one_thing_from_tpo():
    tasks = ("temporal", "mask")
    runs = {v: variant_run(v, tasks, seed=1, minutes=2.0, batch_size=4)
            for v in ("tpo", "textual", "single:mask", "no_conversation", "query_words", "no_scaffold")}
    assert runs["tpo"].tasks == tasks and runs["tpo"].conversation and not runs["tpo"].query_words
    assert runs["tpo"].scaffold_seconds == pytest.approx(0.4 * 120)
    assert runs["no_scaffold"].scaffold_seconds is None
    assert runs["textual"].scaffold_seconds is None and runs["query_words"].scaffold_seconds is None
    assert runs["textual"].textual and runs["textual"].tasks == ("temporal",)  # masks have no text
    assert runs["single:mask"].tasks == ("mask",) and runs["single:mask"].conversation
    assert not runs["no_conversation"].conversation and runs["no_conversation"].tasks == tasks
    assert runs["query_words"].query_words
    assert runs["no_scaffold"].tasks == tasks and not runs["no_scaffold"].query_words
    assert {(r.seed, r.minutes, r.batch_size) for r in runs.values()} == {(1, 2.0, 4)}


# ---------------------------------------------------------------------------------------- results
def _record(variant: str, seed: int, values: dict[tuple[str, str, str], float]) -> dict:
    rows = [{"task": t, "metric": m, "mode": mode, "value": v} for (t, m, mode), v in values.items()]
    return {"variant": variant, "seed": seed, "steps": 10 + seed, "rows": rows}


def _summary() -> dict:
    tf, gen, chat = ("temporal", "R1@0.5", "teacher-forced"), ("temporal", "R1@0.5", "generated"), (
        "conversation", "LM loss", "teacher-forced")
    records = [
        _record("tpo", 0, {tf: 0.5, gen: 0.25, chat: 2.0}),
        _record("tpo", 1, {tf: 0.7, gen: None, chat: 3.0}),
        _record("textual", 0, {gen: 0.1, chat: 2.5}),
        _record("textual", 1, {gen: 0.3, chat: 2.5}),
    ]
    skipped = [{"variant": "textual", "task": "mask", "reason": "no textual form"}]
    return summarise(records, minutes=0.5, seeds=[0, 1], tasks=["temporal", "mask"], n_videos=24,
                     skipped=skipped)


def test_the_summary_has_a_value_per_seed_and_their_mean_and_std():
    summary = _summary()
    assert summary["budget_minutes"] == 0.5 and summary["seeds"] == [0, 1]
    assert summary["steps"] == {"tpo": [10, 11], "textual": [10, 11]}
    rows = {(r["variant"], r["task"], r["metric"], r["mode"]): r for r in summary["rows"]}
    tf = rows[("tpo", "temporal", "R1@0.5", "teacher-forced")]
    assert tf["values"] == [0.5, 0.7]
    assert tf["mean"] == pytest.approx(0.6) and tf["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    gen = rows[("tpo", "temporal", "R1@0.5", "generated")]
    assert gen["values"] == [0.25, None] and gen["mean"] == 0.25 and gen["std"] == 0.0
    assert rows[("textual", "conversation", "LM loss", "teacher-forced")]["std"] == 0.0
    assert [(r["task"], r["variant"], r["mode"]) for r in summary["rows"]][:3] == [
        ("temporal", "tpo", "teacher-forced"), ("temporal", "tpo", "generated"),
        ("temporal", "textual", "generated")]
    assert summary["rows"][-1]["task"] == "conversation"
    json.dumps(summary, allow_nan=False)


def test_the_table_and_the_chart_show_every_row(tmp_path):
    summary = _summary()
    table = markdown_table(summary)
    assert "| temporal | R1@0.5 | tpo | teacher-forced | 0.600 | 0.141 | 0.500, 0.700 |" in table
    assert "| mask | - | textual | - | skipped | | no textual form |" in table
    assert "Optimizer steps per run (seed order): tpo 10, 11; textual 10, 11." in table
    assert "| conversation | LM loss | textual | teacher-forced | 2.500 |" in table
    figure = plot_ablation(summary, tmp_path / "ablation.png")
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["temporal: R1@0.5", "conversation: LM loss"]
    assert [len(ax.patches) for ax in panels] == [3, 2]
    assert (tmp_path / "ablation.png").stat().st_size > 5000


# ---------------------------------------------------------------------------------------- resume
def test_a_finished_run_is_reused_and_one_of_another_configuration_is_refused(tmp_path, monkeypatch):
    import tpo.ablate

    run = variant_run("tpo", ("temporal",), seed=0, minutes=1.0, batch_size=8)
    path = run_dir(tmp_path, "tpo", 0) / "metrics.json"
    path.parent.mkdir(parents=True)
    record = {"signature": run_signature("tpo", run, 24), "variant": "tpo", "seed": 0, "steps": 3, "rows": []}
    path.write_text(json.dumps(record))
    monkeypatch.setattr(tpo.ablate, "execute_run", lambda *a: pytest.fail("a finished run was trained again"))
    assert finished_or_run(tmp_path, "tpo", run, tmp_path / "data", 24, False) == record
    longer = variant_run("tpo", ("temporal",), seed=0, minutes=2.0, batch_size=8)
    message = r"seed0/metrics.json: a finished run made with another .*\(run.minutes: 1.0 -> 2.0\)"
    with pytest.raises(ValueError, match=message):
        finished_or_run(tmp_path, "tpo", longer, tmp_path / "data", 24, False)
    assert run_dir(tmp_path, "single:box", 1) == tmp_path / "runs" / "single-box" / "seed1"


@pytest.fixture(scope="module")
def tiny_ablation(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    summary = ablate(out, variants=["tpo", "textual"], tasks=("temporal", "mask"), minutes=0.05, seeds=1,
                     n_videos=24, batch_size=8, show_progress=False)
    return out, summary


@pytest.mark.slow
def test_a_tiny_ablation_writes_runs_results_table_and_chart(tiny_ablation):
    out, summary = tiny_ablation
    assert json.loads((out / "ablation.json").read_text()) == summary
    keys = {(r["variant"], r["task"], r["metric"], r["mode"]) for r in summary["rows"]}
    assert {("tpo", "temporal", "R1@0.5", "teacher-forced"), ("tpo", "temporal", "R1@0.5", "generated"),
            ("textual", "temporal", "R1@0.5", "generated"), ("tpo", "mask", "J&F", "teacher-forced"),
            ("tpo", "conversation", "LM loss", "teacher-forced"),
            ("textual", "conversation", "LM loss", "teacher-forced")} <= keys
    assert not any(variant == "textual" and task == "mask" for variant, task, *_ in keys)
    assert summary["skipped"][0]["variant"] == "textual" and summary["skipped"][0]["task"] == "mask"
    for r in summary["rows"]:
        assert len(r["values"]) == 1 and r["mean"] == r["values"][0] and r["std"] == 0.0, r
    assert 0 < summary["rows"][-1]["mean"] < 20  # the conversation loss, nats per token
    for variant in ("tpo", "textual"):
        record = json.loads((out / "runs" / variant / "seed0" / "metrics.json").read_text())
        assert record["steps"] > 0 and record["rows"]
    assert "skipped" in (out / "ablation.md").read_text()
    assert (out / "ablation.png").stat().st_size > 5000


@pytest.mark.slow
def test_a_rerun_skips_finished_runs(tiny_ablation, monkeypatch):
    import tpo.ablate

    out, summary = tiny_ablation
    monkeypatch.setattr(tpo.ablate, "train_run", lambda *a, **k: pytest.fail("a finished run was retrained"))
    assert ablate(out, variants=["tpo", "textual"], tasks=("temporal", "mask"), minutes=0.05, seeds=1,
                  n_videos=24, batch_size=8, show_progress=False) == summary
    with pytest.raises(ValueError, match="holds 24 clips but --videos is 30"):
        ablate(out, variants=["tpo"], tasks=("temporal",), minutes=0.05, seeds=1, n_videos=30)


def test_a_textual_run_has_no_query_words_and_only_tasks_with_a_textual_form():
    from tpo.demo import RunConfig

    with pytest.raises(ValueError, match="query_words"):
        RunConfig(tasks=("temporal",), textual=True, query_words=True)
    with pytest.raises(ValueError, match=r"\['mask'\] have no textual form"):
        RunConfig(tasks=("temporal", "mask"), textual=True, query_words=False)


def test_tpo_ablate_is_a_subcommand(capsys):
    from tpo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--help"])
    assert exit_info.value.code == 0
    assert "single:<task>" in capsys.readouterr().out
    main([])
    assert "ablate" in capsys.readouterr().out


def test_a_textual_tracking_item_writes_the_boxes_its_parser_reads_back(tmp_path):
    """The dataset's textual answer (corners per frame) parses back to its own target boxes."""
    from tpo.datamodules import make_synthetic_dataset
    from tpo.datamodules.multitask import synthetic_task_dataset
    from tpo.datamodules.synthetic import SyntheticDataset

    make_synthetic_dataset(tmp_path, n_videos=2, size=32, num_frames=8, seed=0)
    data = SyntheticDataset.load(tmp_path)
    item = synthetic_task_dataset(data, "track", "train", num_frames=4, sampling="uniform", textual=True)[0]
    height, width = item["meta"]["frame_size"]
    parsed = get_task("track").parse_textual_answer(item["turns"][0][1], {**item["meta"],
                                                                          "image_size": (height, width)})
    cx, cy, w, h = np.asarray(item["target"]["boxes"]).T
    truth = np.stack([(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height], 1)
    visible = np.asarray(item["target"]["visible"])
    np.testing.assert_allclose(parsed.boxes_xywh.numpy()[visible], truth[visible], atol=0.01 * width)

"""Submission files: predictions -> the official layouts -> ``tpo eval`` gives the numbers the
metric classes give on the same predictions (and the top value for a perfect prediction)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback
from PIL import Image
from test_module import SMALL_HEADS

import tpo.submission as submission
from tpo.answer import make_answer
from tpo.datamodules import make_synthetic_dataset
from tpo.datamodules.formats import davis, got10k, lasot, qvhighlights, refcoco, refytvos
from tpo.datamodules.formats._frames import DAVIS_PALETTE
from tpo.datamodules.samples import MomentSample
from tpo.heads import BoxPrediction, MaskPrediction, TemporalGroundingPrediction, TrackingPrediction
from tpo.metrics import (
    GOT10kMetrics,
    GroundingAccuracy,
    HighlightDetection,
    JAndF,
    MomentRetrieval,
    TrackingSuccess,
)
from tpo.metrics.cli import eval_main
from tpo.predict import Predictor
from tpo.submission import (
    Submission,
    clip_saliency,
    write_davis_sequence,
    write_got10k_sequence,
    write_lasot_sequence,
    write_mevis_expression,
    write_refytvos_expression,
    write_submission,
    zip_submission,
)

RNG = np.random.default_rng(0)


def tpo_eval(tmp_path: Path, *args: str) -> dict:
    """``tpo eval ...`` (exit 0) and the JSON it saved."""
    saved = tmp_path / f"eval_{args[0]}.json"
    assert eval_main([*args, "--save", str(saved)]) == 0
    return json.loads(saved.read_text())


def pct(value) -> float:
    return round(100 * float(value), 2)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("submission") / "data"
    make_synthetic_dataset(root, n_videos=6, size=32, num_frames=4, val_fraction=0.34, seed=1)
    return root


# ---------------------------------------------------------------------------- moments
QV_GT = [
    {"qid": 7, "query": "a dog runs", "vid": "v1", "duration": 20, "relevant_windows": [[4.0, 10.0]],
     "relevant_clip_ids": [2, 3, 4], "saliency_scores": [[2, 3, 4], [4, 4, 4], [1, 2, 3]]},
    {"qid": 8, "query": "a cat sleeps", "vid": "v2", "duration": 20,
     "relevant_windows": [[0.0, 6.0], [12.0, 16.0]], "relevant_clip_ids": [0, 1, 2, 6, 7],
     "saliency_scores": [[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4], [0, 1, 2]]},
    {"qid": 9, "query": "a car turns", "vid": "v3", "duration": 20, "relevant_windows": [[14.0, 20.0]],
     "relevant_clip_ids": [7, 8, 9], "saliency_scores": [[4, 3, 2], [3, 3, 3], [2, 2, 2]]},
]
TIMESTAMPS = np.arange(8) * 2.5  # 8 frames read from each 20-s video


def qv_answers(perfect: bool) -> tuple[list, list[MomentSample]]:
    answers, samples = [], []
    for row in QV_GT:
        gt = torch.tensor(row["relevant_windows"])
        windows = torch.cat([gt, torch.ones(len(gt), 1)], 1) if perfect else torch.tensor(
            [[gt[0, 0] + RNG.uniform(-3, 3), gt[0, 1] + RNG.uniform(0, 3), 0.9], [0.0, 5.0, 0.4]])
        windows[:, :2] = windows[:, :2].clamp(0, 20)
        saliency = torch.tensor(RNG.random(len(TIMESTAMPS)), dtype=torch.float32)
        prediction = TemporalGroundingPrediction(windows=windows.float(), saliency=saliency)
        answers.append(make_answer("<time_begin><temp>", "temporal", prediction, TIMESTAMPS))
        samples.append(MomentSample(vid=row["vid"], query=row["query"], windows=gt.numpy(), duration=20.0,
                                    qid=row["qid"]))
    return answers, samples


def clip_scores(row: dict) -> torch.Tensor:
    scores = torch.zeros(int(row["duration"] / 2), 3)
    scores[row["relevant_clip_ids"]] = torch.tensor(row["saliency_scores"], dtype=torch.float32)
    return scores


def test_qvhighlights_round_trip_equals_the_metric_classes(tmp_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps(r) + "\n" for r in QV_GT))
    answers, samples = qv_answers(perfect=False)
    out = write_submission(answers, samples, benchmark="qvhighlights",
                           out=tmp_path / "hl_val_submission.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    keys = ["qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores"]
    assert [list(r) for r in rows] == [keys] * 3
    assert [[r[k] for k in keys[:3]] for r in rows] == [[g[k] for k in keys[:3]] for g in QV_GT]
    assert all(len(r["pred_saliency_scores"]) == 10 for r in rows)  # one per 2-s clip of 20 s

    brief = tpo_eval(tmp_path, "qvhighlights", "--submission", str(out), "--gt", str(gt))["brief"]
    windows = [a.prediction.windows for a in answers]
    moments = MomentRetrieval(r1_thresholds=(0.5, 0.7))
    moments.update(windows, [torch.tensor(r["relevant_windows"]) for r in QV_GT])
    expected = moments.compute()
    highlights = HighlightDetection()
    clips = [torch.as_tensor(clip_saliency(a.prediction.saliency, TIMESTAMPS, 20.0)) for a in answers]
    highlights.update(clips, [clip_scores(r) for r in QV_GT])
    hl = highlights.compute()
    assert brief["MR-full-R1@0.5"] == pct(expected["R1@0.5"])
    assert brief["MR-full-R1@0.7"] == pct(expected["R1@0.7"])
    assert brief["MR-full-mAP"] == pct(expected["mAP"])
    assert brief["HL-min-VeryGood-mAP"] == pct(hl["VeryGood-mAP"])
    assert brief["HL-min-Fair-Hit1"] == pct(hl["Fair-Hit1"])

    answers, samples = qv_answers(perfect=True)
    out = write_submission(answers, samples, benchmark="qvhighlights", out=tmp_path / "perfect.jsonl")
    brief = tpo_eval(tmp_path, "qvhighlights", "--submission", str(out), "--gt", str(gt))["brief"]
    assert brief["MR-full-R1@0.5"] == 100.0 and brief["MR-full-mAP"] == 100.0


def test_clip_saliency_takes_the_frame_nearest_each_clip_centre():
    scores = clip_saliency(np.array([0.1, 0.2, 0.3]), np.array([0.0, 3.0, 7.5]), duration=9.0)
    assert scores.tolist() == [0.1, 0.2, 0.2, 0.3]  # clips centred at 1, 3, 5, 7 s


class CapturePredictions(Callback):
    """Keeps every sample ``tpo predict`` predicted (for the independent computation)."""

    samples: list[dict] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        CapturePredictions.samples += outputs


def predict_config(tmp_path: Path, synthetic: Path, spec: dict, task: str) -> Path:
    cfg = {"model": {"backbone": {"name": "tiny_llava", "kind": "llava", "hidden_size": 64},
                     "heads": {task: SMALL_HEADS[task]}, "stage": "stage3"},
           "data": {"train": {task: spec}, "predict": {task: spec}, "batch_size": 3},
           "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                       "enable_model_summary": False, "default_root_dir": str(tmp_path / "run")}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_tpo_predict(config: Path, benchmark: str, out: Path, *extra: str) -> list[dict]:
    from tpo.cli import main

    CapturePredictions.samples = []
    main(["predict", "--config", str(config),
          "--trainer.callbacks+=tpo.submission.SubmissionWriter",
          f"--trainer.callbacks.benchmark={benchmark}", f"--trainer.callbacks.out={out}", *extra,
          "--trainer.callbacks+=test_submission.CapturePredictions"])
    return CapturePredictions.samples


def test_tpo_predict_writes_a_charades_submission_tpo_eval_scores(tmp_path, synthetic):
    val = synthetic / "qvhighlights_val.jsonl"
    spec = {"format": "qvhighlights", "path": str(val), "media_root": str(synthetic / "videos"),
            "read_options": {"clip_len": 0.125}, "options": {"num_frames": 4}}
    out = tmp_path / "charades_predictions.jsonl"
    predicted = run_tpo_predict(predict_config(tmp_path, synthetic, spec, "temporal"), "charades", out,
                                f"--trainer.callbacks.zip_path={tmp_path / 'charades.zip'}")

    truth = {s.qid: s for s in qvhighlights.read(val, clip_len=0.125)}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["qid"] for r in rows) == sorted(truth) and len(predicted) == len(truth) == 4
    for row in rows:
        assert (row["vid"], row["query"]) == (truth[row["qid"]].vid, truth[row["qid"]].query)
        assert "pred_saliency_scores" not in row
    assert zipfile.ZipFile(tmp_path / "charades.zip").namelist() == ["charades_predictions.jsonl"]

    scores = tpo_eval(tmp_path, "charades", "--submission", str(out), "--gt", str(val))
    metric = MomentRetrieval(r1_thresholds=(0.3, 0.5, 0.7))
    metric.update([p["prediction"].windows for p in predicted],
                  [torch.as_tensor(truth[p["meta"]["id"]].windows) for p in predicted])
    expected = metric.compute()
    assert scores == {"R1@0.3": pct(expected["R1@0.3"]), "R1@0.5": pct(expected["R1@0.5"]),
                      "R1@0.7": pct(expected["R1@0.7"]), "mIoU": pct(expected["mIoU"])}


# ---------------------------------------------------------------------------- tracking
def noisy(boxes: np.ndarray, scale: float) -> np.ndarray:
    """Boxes moved by up to ``scale`` px, on a 1/8-px grid (written exactly by ``%.3f``)."""
    moved = boxes + RNG.uniform(-scale, scale, boxes.shape) * (boxes[:, 2:3] > 0)
    moved[:, 2:] = np.maximum(moved[:, 2:], 1.0)
    return np.round(moved * 8) / 8


def track_answer(boxes: np.ndarray):
    n = len(boxes)
    prediction = TrackingPrediction(boxes_xywh=torch.as_tensor(boxes, dtype=torch.float64),
                                    visible=torch.ones(n, dtype=torch.bool), scores=torch.ones(n))
    return make_answer("<track_begin><tracking>", "track", prediction, np.arange(n) / 10)


def test_got10k_round_trip_equals_got10k_metrics_and_reads_every_frame(tmp_path, synthetic):
    samples = got10k.read(synthetic / "got10k", "train")
    preds = [noisy(s.boxes_xywh, 3.0) for s in samples]
    answers = [track_answer(p) for p in preds]
    out = write_submission(answers, samples, benchmark="got10k", out=tmp_path / "tpo")
    for s in samples:
        lines = (out / s.name / f"{s.name}_001.txt").read_text().splitlines()
        assert len(lines) == len(s.frames) and lines[0].count(",") == 3

    scores = tpo_eval(tmp_path, "got10k", "--results", str(out), "--gt", str(synthetic / "got10k"),
                      "--split", "train")
    metric = GOT10kMetrics()
    for s, p in zip(samples, preds, strict=True):
        metric.update(torch.as_tensor(p), torch.as_tensor(s.boxes_xywh), torch.as_tensor(s.visible),
                      s.image_size[::-1])
    expected = metric.compute()
    assert scores["num_sequences"] == len(samples) == 4
    for key in ("AO", "SR@0.5", "SR@0.75"):
        assert scores[key] == pytest.approx(float(expected[key]), abs=1e-12), key

    perfect = write_submission([track_answer(s.boxes_xywh) for s in samples], samples, benchmark="got10k",
                               out=tmp_path / "perfect")
    scores = tpo_eval(tmp_path, "got10k", "--results", str(perfect), "--gt", str(synthetic / "got10k"),
                      "--split", "train")
    assert scores["AO"] == 1.0 and scores["SR@0.75"] == 1.0
    names = zipfile.ZipFile(zip_submission(perfect, "got10k")).namelist()
    assert sorted(names) == sorted(f"{s.name}/{s.name}_001.txt" for s in samples)


def test_tpo_predict_writes_got10k_results_that_tpo_eval_scores(tmp_path, synthetic):
    root = synthetic / "got10k"
    spec = {"format": "got10k", "path": str(root), "read_options": {"split": "val"},
            "options": {"num_frames": 4, "sampling": "uniform"}}
    out = tmp_path / "results" / "tpo"
    predicted = run_tpo_predict(predict_config(tmp_path, synthetic, spec, "track"), "got10k", out,
                                f"--trainer.callbacks.zip_path={tmp_path / 'tpo.zip'}")

    truth = {s.name: s for s in got10k.read(root, "val")}
    assert sorted(p["meta"]["id"] for p in predicted) == sorted(truth) and len(truth) == 2
    metric = GOT10kMetrics()
    for p in predicted:
        sample, read = truth[p["meta"]["id"]], list(p["meta"]["frame_indices"])
        first = [read.index(i) for i in range(len(sample.frames))]  # every frame was read
        boxes = p["prediction"].boxes_xywh.double().numpy()[first]
        times = np.loadtxt(out / sample.name / f"{sample.name}_time.txt", ndmin=1)
        assert len(times) == len(sample.frames) and (times > 0).all()
        boxes = np.round(boxes, 3)  # as the results file holds them
        metric.update(torch.as_tensor(boxes), torch.as_tensor(sample.boxes_xywh),
                      torch.as_tensor(sample.visible), sample.image_size[::-1])
    expected = metric.compute()
    scores = tpo_eval(tmp_path, "got10k", "--results", str(out), "--gt", str(root), "--split", "val")
    for key in ("AO", "SR@0.5", "SR@0.75"):
        assert scores[key] == pytest.approx(float(expected[key]), abs=1e-9), key
    assert sorted(zipfile.ZipFile(tmp_path / "tpo.zip").namelist()) == sorted(
        f"{name}/{name}_{kind}.txt" for name in truth for kind in ("001", "time"))


def test_sampled_frames_become_one_box_per_frame_with_a_time_file(tmp_path):
    boxes = np.array([[1, 1, 4, 4], [1, 1, 4, 4], [2, 2, 4, 4], [3, 3, 4, 4], [4, 4, 4, 4], [4, 4, 4, 4.0]])
    results = Submission("got10k", tmp_path)
    results.add({"id": "seq1", "frame_indices": [0, 0, 1, 2, 3, 3], "seconds": 0.4},
                track_answer(boxes).prediction)
    written = np.loadtxt(tmp_path / "seq1" / "seq1_001.txt", delimiter=",")
    assert written.tolist() == boxes[[0, 2, 3, 4]].tolist()
    assert np.loadtxt(tmp_path / "seq1" / "seq1_time.txt").tolist() == [0.1] * 4  # 0.4 s over 4 frames


def test_lasot_round_trip_equals_tracking_success(tmp_path):
    gt_root, frames = tmp_path / "lasot", np.zeros((5, 32, 32, 3), np.uint8)
    samples = []
    for k in (1, 2):
        boxes = np.array([[2 + 3 * t, 4 + k, 8, 9] for t in range(5)], float)
        samples.append(lasot.write(gt_root, f"cat-{k}", frames, boxes, np.ones(5, bool)))
    preds = [noisy(s.boxes_xywh, 2.0) for s in samples]
    out = write_submission([track_answer(p) for p in preds], samples, benchmark="lasot", out=tmp_path / "tpo")
    assert sorted(p.name for p in out.iterdir()) == ["cat-1.txt", "cat-2.txt"]

    scores = tpo_eval(tmp_path, "lasot", "--results", str(out), "--gt", str(gt_root))
    metric = TrackingSuccess(replace_first=True)
    for s, p in zip(samples, preds, strict=True):
        metric.update(torch.as_tensor(p), torch.as_tensor(s.boxes_xywh))
    expected = metric.compute()
    for key in ("success", "precision", "norm_precision"):
        assert scores[key] == pytest.approx(float(expected[key]), abs=1e-12), key


# ---------------------------------------------------------------------------- grounding
def test_refcoco_round_trip_equals_grounding_accuracy(tmp_path, synthetic):
    gt = synthetic / "refs_train.json"
    samples = refcoco.read_flat(gt, synthetic)
    boxes = [np.asarray(s.box_xyxy, float) + RNG.uniform(-4, 4, 4) * [1, 1, -1, -1] for s in samples]
    answers = [make_answer("<box_begin><boxes>", "box", BoxPrediction(torch.as_tensor(b)), None)
               for b in boxes]
    out = write_submission(answers, samples, benchmark="refcoco", out=tmp_path / "refcoco_predictions.json")
    assert [r["ref_id"] for r in json.loads(out.read_text())] == [s.ref_id for s in samples]

    scores = tpo_eval(tmp_path, "refcoco", "--results", str(out), "--gt", str(gt))
    metric = GroundingAccuracy(iou_threshold=0.5)
    metric.update(torch.as_tensor(np.stack(boxes)), torch.as_tensor(np.stack([s.box_xyxy for s in samples])))
    expected = metric.compute()
    assert scores["num_samples"] == len(samples)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(float(value), abs=1e-12), key


# ---------------------------------------------------------------------------- masks
def disc(t: int, size: int = 24, shift: int = 0) -> np.ndarray:
    ys, xs = np.mgrid[:size, :size]
    return (ys - 10) ** 2 + (xs - 6 - 2 * t - shift) ** 2 < 20


def mask_answer(masks: np.ndarray):
    prediction = MaskPrediction(masks=torch.as_tensor(masks), scores=torch.ones(len(masks)))
    return make_answer("<seg_begin><seg>", "mask", prediction, np.arange(len(masks)) / 24)


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    for name, shift in (("bear", 0), ("camel", 3)):
        labels = np.stack([disc(t, shift=shift) for t in range(5)]).astype(np.uint8)
        davis.write(root, name, np.zeros((5, 24, 24, 3), np.uint8), labels, split="val")
    return root


def test_davis_writes_palette_label_maps_and_a_flat_zip(tmp_path, davis_root):
    samples = davis.read(davis_root, "val")
    out = write_submission([mask_answer(s.load_masks()[0]) for s in samples], samples, benchmark="davis",
                           out=tmp_path / "results")
    with Image.open(out / "bear" / "00003.png") as png:
        assert png.mode == "P" and png.getpalette()[:9] == DAVIS_PALETTE[:9]
        assert np.array_equal(np.array(png), disc(3).astype(np.uint8))
    (out / ".bear.1.partial").mkdir()  # a writer killed mid-sequence
    (out / ".bear.1.partial" / "00000.png").write_bytes(b"")
    names = zipfile.ZipFile(zip_submission(out, "davis")).namelist()
    assert sorted(names) == [f"{seq}/{i:05d}.png" for seq in ("bear", "camel") for i in range(5)]

    two = write_davis_sequence(tmp_path / "multi", "pair", np.stack([disc(0)[None], disc(0, shift=1)[None]]),
                               ["00000"], object_ids=[3, 5])
    labels = np.array(Image.open(two / "00000.png"))
    assert set(np.unique(labels)) == {0, 3, 5} and labels[disc(0, shift=1)].tolist() == [5] * disc(0).sum()


def test_davis_round_trip_equals_j_and_f(tmp_path, davis_root):
    samples = davis.read(davis_root, "val")
    truth = [s.load_masks()[0] for s in samples]
    preds = [np.stack([disc(t, shift=shift + 1) for t in range(5)]) for shift in (0, 3)]
    answers = [mask_answer(p) for p in preds]
    out = write_submission(answers, samples, benchmark="davis", out=tmp_path / "results")
    scores = tpo_eval(tmp_path, "davis", "--results", str(out), "--gt", str(davis_root), "--split", "val")
    metric = JAndF(drop_first_last=True)
    for p, t in zip(preds, truth, strict=True):
        metric.update(torch.as_tensor(p), torch.as_tensor(t))
    assert scores["J&F-Mean"] == pytest.approx(float(metric.compute()["J&F"]), abs=1e-6)

    answers = [mask_answer(t) for t in truth]
    perfect = write_submission(answers, samples, benchmark="davis", out=tmp_path / "perfect")
    scores = tpo_eval(tmp_path, "davis", "--results", str(perfect), "--gt", str(davis_root), "--split", "val")
    assert scores["J&F-Mean"] == pytest.approx(1.0)


def read_binary(folder: Path, names: list[str]) -> np.ndarray:
    pngs = [np.array(Image.open(folder / f"{n}.png")) for n in names]
    assert all(set(np.unique(p)) <= {0, 255} for p in pngs)
    return np.stack(pngs) == 255


def write_mevis_ground_truth(root: Path, samples: list, truth: list[np.ndarray]) -> Path:
    """The same expressions in MeViS' layout (``valid_u``: JPEG frames, meta expressions and one
    COCO RLE per object and frame)."""
    from pycocotools import mask as mask_utils

    split, videos, mask_dict = root / "valid_u", {}, {}
    for k, (sample, masks) in enumerate(zip(samples, truth, strict=True)):
        vid, eid = sample.name.split("/")
        names = [Path(f).stem for f in sample.frames]
        entry = videos.setdefault(vid, {"expressions": {}, "frames": names})
        entry["expressions"][eid] = {"exp": sample.expression, "obj_id": [k], "anno_id": [str(k)]}
        rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
        mask_dict[str(k)] = [{"size": r["size"], "counts": r["counts"].decode()} for r in rles]
        (split / "JPEGImages" / vid).mkdir(parents=True, exist_ok=True)
        for frame, name in zip(sample.frames, names, strict=True):
            shutil.copyfile(frame, split / "JPEGImages" / vid / f"{name}.jpg")
    (split / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    (split / "mask_dict.json").write_text(json.dumps(mask_dict))
    return root


@pytest.mark.parametrize(("benchmark", "top"), [("refytvos", "Annotations"), ("mevis", "")])
def test_refytvos_and_mevis_round_trip_equals_j_and_f(tmp_path, synthetic, benchmark, top):
    samples = refytvos.read(synthetic / "refytvos", "val")
    truth = [s.load_masks()[0] for s in samples]
    if benchmark == "refytvos":
        gt, split = synthetic / "refytvos", "val"
    else:
        gt, split = write_mevis_ground_truth(tmp_path / "mevis", samples, truth), "valid_u"
    preds = [np.roll(t, 1, axis=2) for t in truth]
    answers = [mask_answer(p) for p in preds]
    out = write_submission(answers, samples, benchmark=benchmark, out=tmp_path / "sub")
    metric = JAndF()
    for s, p, t in zip(samples, preds, truth, strict=True):
        names = [Path(f).stem for f in s.frames]
        assert names[1] == "00005"  # Ref-YouTube-VOS frame names, not indices
        assert np.array_equal(read_binary(out / top / s.name, names), p)
        metric.update(torch.as_tensor(p), torch.as_tensor(t))
    args = ["--layout", benchmark, "--gt", str(gt), "--split", split]
    scores = tpo_eval(tmp_path, "davis", "--results", str(out / top), *args)
    assert scores["num_expressions"] == len(samples) and scores["missing"] == []
    expected = float(metric.compute()["J&F"])
    assert scores["J&F-Mean"] == pytest.approx(expected, abs=1e-6) and expected < 1.0
    names = zipfile.ZipFile(zip_submission(out, benchmark)).namelist()  # MeViS: video folders on top
    assert sorted(names) == sorted(f"{top}/{s.name}/{Path(f).stem}.png".lstrip("/")
                                   for s in samples for f in s.frames)

    perfect = write_submission([mask_answer(t) for t in truth], samples, benchmark=benchmark,
                               out=tmp_path / "perfect")
    assert tpo_eval(tmp_path, "davis", "--results", str(perfect / top), *args)["J&F-Mean"] == 1.0


# ---------------------------------------------------------------------------- entry points, errors
def test_predictor_write_submission_is_the_module_function(tmp_path):
    answers, samples = qv_answers(perfect=True)
    out = Predictor.write_submission(None, answers[:1], samples[:1], benchmark="charades",
                                     out=tmp_path / "c.jsonl")
    assert json.loads(out.read_text())["qid"] == 7


def test_a_failing_write_leaves_the_previous_sequence_whole(tmp_path, monkeypatch):
    masks = np.stack([disc(t) for t in range(3)])
    write_davis_sequence(tmp_path, "bear", masks, ["00000", "00001", "00002"])
    calls = []

    def fail_on_second(path, labels):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        Image.fromarray(labels, mode="P").save(path)

    monkeypatch.setattr(submission, "write_label_map", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        write_davis_sequence(tmp_path, "bear", ~masks, ["00000", "00001", "00002"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bear"]
    assert np.array_equal(np.array(Image.open(tmp_path / "bear" / "00001.png")), masks[1].astype(np.uint8))


MOMENT = {"id": 1, "vid": "v", "query": "q", "duration": 4.0, "timestamps": [0.0, 2.0]}
WINDOWS = TemporalGroundingPrediction(windows=torch.tensor([[0.0, 1.0, 0.5]]), saliency=torch.ones(2))
TRACK = track_answer(np.ones((4, 4))).prediction
MASKS = mask_answer(np.zeros((2, 6, 6), bool)).prediction


@pytest.mark.parametrize(("benchmark", "meta", "prediction", "message"), [
    ("charades", {"vid": "v", "query": "q"}, WINDOWS, r"charades sample 0: meta has no 'id'"),
    ("charades", {"id": 1, "query": "q"}, WINDOWS, r"sample 1: meta has no 'vid'"),
    ("qvhighlights", {**MOMENT, "duration": None}, WINDOWS, r"sample 1: meta has no 'duration'"),
    ("charades", MOMENT, None, r"sample 1: no prediction \(the model called no task\)"),
    ("charades", MOMENT, TRACK, r"sample 1: a TrackingPrediction has no \['windows'\]"),
    ("charades", MOMENT, TemporalGroundingPrediction(torch.tensor([[0.0, float("nan"), 1.0]]), torch.ones(2)),
     r"qid 1: windows holds a non-finite value at \[0, 1\]"),
    ("charades", MOMENT, TemporalGroundingPrediction(torch.tensor([[3.0, 1.0, 1.0]]), torch.ones(2)),
     r"qid 1: window 0 \[3.0, 1.0\] has start > end"),
    ("got10k", {"id": "s", "frame_names": list("abcde")}, TRACK,
     r"sample 's': predictions cover frames \[0, 1, 2, 3\] of a 5-frame sequence \(missing \[4\]\)"),
    ("got10k", {"id": "s", "frame_indices": [0, 1, 3, 4]}, TRACK, r"sample 's': .*missing \[2\]"),
    ("lasot", {"id": "s", "frame_names": list("abc"), "frame_indices": [0, 1, 2, 3]}, TRACK,
     r"sample 's': frame_indices \[0, 1, 2, 3\] outside the 3 frames of the sequence"),
    ("lasot", {"id": "s"}, TrackingPrediction(torch.full((4, 4), float("nan")), torch.ones(4), torch.ones(4)),
     r"sequence 's': boxes holds a non-finite value"),
    ("refcoco", {"id": None}, BoxPrediction(torch.ones(4)), r"meta has no 'id'"),
    ("refcoco", {"id": 3}, BoxPrediction(torch.tensor([5.0, 1.0, 2.0, 4.0])), r"ref_id 3: .*x1 <= x2"),
    ("davis", {"id": "bear", "frame_size": (6, 7)}, MASKS, r"sequence 'bear'.*6x6 px but the frames are 7x6"),
    ("davis", {"id": "bear"}, MaskPrediction(torch.zeros(2, 6, 6), torch.ones(2)), r"expected bool masks"),
    ("refytvos", {"id": "vid/0"}, MASKS, r"sample 'vid/0': meta has no 'frame_names'"),
    ("mevis", {"id": "vid", "frame_names": ["a", "b"]}, MASKS, r"id 'vid': expected '<video>/<exp_id>'"),
])
def test_bad_predictions_and_identifiers_are_named(tmp_path, benchmark, meta, prediction, message):
    with pytest.raises(ValueError, match=message):
        Submission(benchmark, tmp_path / "out").add(meta, prediction)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


@pytest.mark.parametrize(("write", "message"), [
    (lambda root: write_got10k_sequence(root, "s", np.ones((4, 4)), 5),
     r"sequence 's': boxes of shape \(4, 4\) for 5 frames; expected one x,y,w,h box per frame"),
    (lambda root: write_lasot_sequence(root, "s", np.ones((5, 3)), 5),
     r"sequence 's': boxes of shape \(5, 3\)"),
    (lambda root: write_got10k_sequence(root, "s", np.ones((2, 4)), 2, seconds_per_frame=-1.0),
     r"sequence 's': seconds_per_frame must be >= 0"),
    (lambda root: write_davis_sequence(root, "bear", np.zeros((2, 6, 6), bool), ["a", "b", "c"]),
     r"sequence 'bear' object 0: masks of shape \(2, 6, 6\) for 3 frames"),
    (lambda root: write_davis_sequence(root, "bear", np.zeros((2, 1, 6, 6), bool), ["a"], object_ids=[1, 1]),
     r"sequence 'bear': object_ids \[1, 1\] for 2 mask tracks; expected 2 distinct ids in 1..254"),
    (lambda root: write_mevis_expression(root, "v", 0, np.zeros((2, 6, 6), bool), ["a", "a"]),
     r"video 'v' expression 0: frame_names: expected distinct file names"),
    (lambda root: write_refytvos_expression(root, "v/w", 0, np.zeros((1, 6, 6), bool), ["a"]),
     r"video 'v/w' expression 0: video 'v/w': expected a folder name without '/'"),
])
def test_the_writers_check_their_input_before_writing(tmp_path, write, message):
    with pytest.raises(ValueError, match=message):
        write(tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.*"))


def test_a_sample_is_never_written_twice_or_left_out(tmp_path):
    results = Submission("charades", tmp_path / "p.jsonl")
    results.add(MOMENT, WINDOWS)
    with pytest.raises(ValueError, match=r"charades sample 1: predicted twice"):
        results.add(MOMENT, WINDOWS)
    with pytest.raises(ValueError, match=r"charades: no sample was added"):
        Submission("charades", tmp_path / "q.jsonl").close()
    answers, samples = qv_answers(perfect=True)
    with pytest.raises(ValueError, match=r"3 answers for 2 samples"):
        write_submission(answers, samples[:2], benchmark="charades", out=tmp_path / "r.jsonl")
    text = make_answer("no idea", None, None, None)
    with pytest.raises(ValueError, match=r"sample 7: no prediction"):
        write_submission([text], samples[:1], benchmark="charades", out=tmp_path / "s.jsonl")
    assert not (tmp_path / "s.jsonl").exists()


def test_a_folder_submission_starts_in_a_new_folder_and_benchmarks_are_named(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "stale.txt").write_text("x")
    with pytest.raises(ValueError, match=r"old: exists and is not an empty folder"):
        write_submission([], [], benchmark="got10k", out=tmp_path / "old")
    with pytest.raises(ValueError, match=r"benchmark: expected one of \['charades', 'davis', 'got10k'"):
        Submission("davis2017", tmp_path)

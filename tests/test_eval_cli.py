"""``tpo eval lasot|got10k|refcoco|davis|charades``: the printed JSON equals the metric classes
computed directly on the same boxes, hand-checked cases, and bad inputs named on one stderr line
(exit 1). (DAVIS / GOT-10k against reference implementations and the official code:
``test_eval_official.py``.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tpo.datamodules.formats import davis, got10k, lasot
from tpo.datamodules.formats.refcoco import write_flat
from tpo.datamodules.samples import RefSample
from tpo.metrics.box import GroundingAccuracy
from tpo.metrics.cli import eval_main
from tpo.metrics.track import GOT10kMetrics, TrackingSuccess

H, W = 32, 40
FRAMES = np.zeros((5, H, W, 3), dtype=np.uint8)
GT_A = np.array([[2, 3, 10, 8], [4, 4, 10, 8], [6, 5, 12, 9], [8, 6, 12, 9], [10, 7, 12, 10.0]])
GT_B = np.array([[20, 10, 8, 12], [21, 11, 8, 12], [22, 12, 8, 12], [23, 13, 8, 12],
                 [24, 14, 8, 12.0]])
VISIBLE_B = np.array([1, 1, 0, 1, 1], dtype=bool)


def write_results(path, boxes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(",".join(f"{v:g}" for v in box) + "\n" for box in boxes))


def run(capsys, *args: str) -> dict:
    assert eval_main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def fails(capsys, *args: str) -> str:
    assert eval_main(list(args)) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("tpo eval: error: "), captured
    assert captured.err.count("\n") == 1, captured.err
    return captured.err


def noisy(gt: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(gt + rng.uniform(-4, 4, gt.shape), 1).clip(min=0.5)


# ------------------------------------------------------------------------------------- LaSOT


@pytest.fixture(scope="module")
def lasot_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lasot")
    lasot.write(root, "cat-1", FRAMES, GT_A, np.ones(5, dtype=bool))
    lasot.write(root, "dog-2", FRAMES, GT_B, VISIBLE_B)
    return root


def test_lasot_matches_tracking_success(lasot_root, tmp_path, capsys):
    preds = {"cat-1": noisy(GT_A, 0), "dog-2": noisy(GT_B, 1)}
    for name, boxes in preds.items():
        write_results(tmp_path / "res" / f"{name}.txt", boxes)
    out = run(capsys, "lasot", "--results", str(tmp_path / "res"), "--gt", str(lasot_root))
    total = TrackingSuccess(replace_first=True)
    for name, gt in (("cat-1", GT_A), ("dog-2", np.where(VISIBLE_B[:, None], GT_B, 0))):
        one = TrackingSuccess(replace_first=True)
        for m in (one, total):
            m.update(torch.tensor(preds[name]), torch.tensor(gt))
        ref = one.compute()
        for key in ("success", "precision", "norm_precision"):
            assert out["sequences"][name][key] == pytest.approx(float(ref[key]), abs=1e-12)
    ref = total.compute()
    assert out["num_sequences"] == 2
    for key in ("success", "precision", "norm_precision"):
        assert out[key] == pytest.approx(float(ref[key]), abs=1e-12)
    assert 0 < out["success"] < 1


def test_lasot_perfect_tracker_and_ignore_absent(lasot_root, tmp_path, capsys):
    write_results(tmp_path / "res" / "cat-1.txt", GT_A)
    write_results(tmp_path / "res" / "dog-2.txt", GT_B)  # hidden frame 2 predicted, gt is 0s
    out = run(capsys, "lasot", "--results", str(tmp_path / "res"), "--gt", str(lasot_root),
              "--ignore-absent")
    # strict IoU > thr on linspace(0, 1, 21) (the toolkit's): IoU 1 passes 20 of 21 thresholds
    assert out["success"] == pytest.approx(20 / 21)
    assert out["precision"] == 1.0 and out["norm_precision"] == 1.0
    out = run(capsys, "lasot", "--results", str(tmp_path / "res"), "--gt", str(lasot_root))
    assert out["sequences"]["cat-1"]["success"] == pytest.approx(20 / 21)
    assert out["sequences"]["dog-2"]["success"] < 1.0  # the absent frame counts by default


def test_lasot_bad_results_are_named(lasot_root, tmp_path, capsys):
    res = tmp_path / "res"
    write_results(res / "cat-1.txt", GT_A)
    err = fails(capsys, "lasot", "--results", str(res), "--gt", str(lasot_root))
    assert "dog-2.txt" in err
    write_results(res / "dog-2.txt", GT_B[:4])
    err = fails(capsys, "lasot", "--results", str(res), "--gt", str(lasot_root))
    assert "dog-2.txt" in err and "4 boxes for 5 frames" in err
    (res / "dog-2.txt").write_text("1,2,3,4\n1,2,3,4\n1,2,x,4\n1,2,3,4\n1,2,3,4\n")
    err = fails(capsys, "lasot", "--results", str(res), "--gt", str(lasot_root))
    assert f"{res / 'dog-2.txt'}:3" in err


def test_results_argument_is_required(lasot_root, capsys):
    with pytest.raises(SystemExit) as info:
        eval_main(["lasot", "--gt", str(lasot_root)])
    assert info.value.code == 2 and "--results" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- GOT-10k


def test_got10k_matches_got10k_metrics_and_bad_input(tmp_path, capsys):
    root = tmp_path / "got"
    got10k.write(root, "val", "GOT-10k_Val_000001", FRAMES, GT_A, np.ones(5, dtype=bool))
    got10k.write(root, "val", "GOT-10k_Val_000002", FRAMES, GT_B, VISIBLE_B)
    gt_b = np.where(VISIBLE_B[:, None], GT_B, 0)
    pred_a, pred_b = noisy(GT_A, 2), noisy(GT_B, 3)
    pred_b[4] = [35, 25, 20, 20]  # leaves the 40x32 frame: clipped
    res = tmp_path / "res"
    write_results(res / "GOT-10k_Val_000001" / "GOT-10k_Val_000001_001.txt", pred_a)
    write_results(res / "GOT-10k_Val_000002" / "GOT-10k_Val_000002_001.txt", pred_b)
    out = run(capsys, "got10k", "--results", str(res), "--gt", str(root))
    ref = GOT10kMetrics()
    ref.update(torch.tensor(pred_a), torch.tensor(GT_A), torch.ones(5, dtype=torch.bool), (W, H))
    ref.update(torch.tensor(pred_b), torch.tensor(gt_b), torch.tensor(VISIBLE_B), (W, H))
    for key, value in ref.compute().items():
        assert out[key] == pytest.approx(float(value), abs=1e-12)
    assert out["num_sequences"] == 2
    # hand check: perfect tracker -> AO = SR = 1 (7 scored frames: 4 + 3)
    write_results(res / "GOT-10k_Val_000001" / "GOT-10k_Val_000001_001.txt", GT_A)
    write_results(res / "GOT-10k_Val_000002" / "GOT-10k_Val_000002_001.txt", GT_B)
    out = run(capsys, "got10k", "--results", str(res), "--gt", str(root))
    assert out["AO"] == 1.0 and out["SR@0.5"] == 1.0 and out["SR@0.75"] == 1.0
    (res / "GOT-10k_Val_000002" / "GOT-10k_Val_000002_001.txt").unlink()
    err = fails(capsys, "got10k", "--results", str(res), "--gt", str(root))
    assert "GOT-10k_Val_000002_001.txt" in err


# ----------------------------------------------------------------------------------- RefCOCO


@pytest.fixture()
def refs(tmp_path):
    gt = tmp_path / "refs.json"
    write_flat(gt, [RefSample("a.jpg", "the dog", [10, 10, 50, 40], (100, 120), ref_id=7),
                    RefSample("b.jpg", "the cat", [0, 0, 20, 20], (100, 120), ref_id="x")])
    return gt


def test_refcoco_matches_grounding_accuracy(refs, tmp_path, capsys):
    preds = [{"ref_id": 7, "box": [12, 11, 50, 42]}, {"ref_id": "x", "box": [10, 10, 30, 30]}]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    out = run(capsys, "refcoco", "--results", str(tmp_path / "p.json"), "--gt", str(refs))
    ref = GroundingAccuracy()
    ref.update(torch.tensor([[12, 11, 50, 42], [10, 10, 30, 30.0]]),
               torch.tensor([[10, 10, 50, 40], [0, 0, 20, 20.0]]))
    for key, value in ref.compute().items():
        assert out[key] == pytest.approx(float(value), abs=1e-12)
    assert out["acc@0.5"] == 0.5 and out["num_samples"] == 2  # one box of two right


@pytest.mark.parametrize("preds, needle", [
    ([{"ref_id": 7, "box": [10, 10, 50, 40]}], "'x'"),
    ([{"ref_id": 7, "box": [10, 10, 50, 40]}, {"ref_id": "7", "box": [1, 1, 2, 2]},
      {"ref_id": "x", "box": [0, 0, 1, 1]}], "twice"),
    ([{"ref_id": 7, "box": [10, 10, 50]}, {"ref_id": "x", "box": [0, 0, 1, 1]}], "row 0"),
], ids=["missing", "duplicate", "bad_box"])
def test_refcoco_bad_predictions_are_named(refs, tmp_path, capsys, preds, needle):
    (tmp_path / "p.json").write_text(json.dumps(preds))
    err = fails(capsys, "refcoco", "--results", str(tmp_path / "p.json"), "--gt", str(refs))
    assert needle in err and "p.json" in err


def test_got10k_clips_to_the_meta_resolution(tmp_path, capsys):
    """The toolkit clips boxes to ``resolution`` of meta_info.ini, not to the frame file's size."""
    root = tmp_path / "got"
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    got10k.write(root, "val", "GOT-10k_Val_000001", FRAMES[:2], gt, np.ones(2, dtype=bool))
    res = tmp_path / "res" / "GOT-10k_Val_000001"
    write_results(res / "GOT-10k_Val_000001_001.txt", [[0, 0, 10, 10], [5, 0, 10, 10]])
    out = run(capsys, "got10k", "--results", str(tmp_path / "res"), "--gt", str(root))
    assert out["AO"] == pytest.approx(50 / 150)  # the 40x32 frames clip nothing
    meta = root / "val" / "GOT-10k_Val_000001" / "meta_info.ini"
    meta.write_text("[METAINFO]\nobject_class: object\nresolution: (10, 10)\n")
    out = run(capsys, "got10k", "--results", str(tmp_path / "res"), "--gt", str(root))
    assert out["AO"] == pytest.approx(50 / 100)  # prediction clipped to x 5..10
    assert out["SR@0.5"] == 0.0  # strict IoU > 0.5
    meta.write_text("[METAINFO]\nresolution: 10x10\n")
    err = fails(capsys, "got10k", "--results", str(tmp_path / "res"), "--gt", str(root))
    assert "meta_info.ini:2" in err and "(width, height)" in err


@pytest.mark.parametrize("case, needle", [
    ("bad_line", "GOT-10k_Val_000001_001.txt:3: expected 'x,y,w,h' (4 numbers)"),
    ("nan_box", "GOT-10k_Val_000001_001.txt: frame[2]"),
    ("bad_cover", "cover.label: label 9 of frame 1: expected one integer in 0..8"),
    ("short_cover", "cover.label: 4 labels for 5 frames"),
])
def test_got10k_bad_files_are_named(tmp_path, capsys, case, needle):
    root = tmp_path / "got"
    got10k.write(root, "val", "GOT-10k_Val_000001", FRAMES, GT_A, np.ones(5, dtype=bool))
    res = tmp_path / "res" / "GOT-10k_Val_000001" / "GOT-10k_Val_000001_001.txt"
    write_results(res, GT_A)
    cover = root / "val" / "GOT-10k_Val_000001" / "cover.label"
    if case == "bad_line":
        res.write_text("1,2,3,4\n1,2,3,4\n1,2,x,4\n1,2,3,4\n1,2,3,4\n")
    elif case == "nan_box":
        res.write_text("1,2,3,4\n1,2,3,4\nnan,2,3,4\n1,2,3,4\n1,2,3,4\n")
    elif case == "bad_cover":
        cover.write_text("8\n9\n8\n8\n8\n")
    else:
        cover.write_text("8\n8\n8\n8\n")
    err = fails(capsys, "got10k", "--results", str(tmp_path / "res"), "--gt", str(root))
    assert needle in err, err


# ------------------------------------------------------------------------------ DAVIS


def write_mask(path, labels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8))
    image.putpalette([0, 0, 0] + [200, 30, 30] * 255)
    image.save(path)


def square(h: int, w: int, top: int, left: int, size: int, value: int = 1) -> np.ndarray:
    out = np.zeros((h, w), dtype=np.uint8)
    out[top:top + size, left:left + size] = value
    return out


@pytest.fixture()
def davis_root(tmp_path):
    """One 4-frame 8x8 sequence ``sq`` with one object (a 4x4 square at the top left); frames 1
    and 2 are scored."""
    labels = np.stack([square(8, 8, 0, 0, 4)] * 4)
    davis.write(tmp_path / "DAVIS", "sq", np.zeros((4, 8, 8, 3), np.uint8), labels, split="val")
    return tmp_path / "DAVIS"


def test_davis_hand_checked(davis_root, tmp_path, capsys):
    res = tmp_path / "res"
    write_mask(res / "sq" / "00001.png", square(8, 8, 0, 2, 4))  # shifted by 2: J = 8 / 24
    write_mask(res / "sq" / "00002.png", square(8, 8, 0, 0, 4))  # exact: J = F = 1
    out = run(capsys, "davis", "--results", str(res), "--gt", str(davis_root))
    assert out["J-Mean"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["J-Recall"] == 0.5
    assert out["J-Decay"] == pytest.approx(1 / 3 - 1)  # two frames: bins [0], [0, 1], [1], [1]
    assert out["sequences"] == {"sq_1": {"J-Mean": out["J-Mean"], "F-Mean": out["F-Mean"]}}
    assert out["J&F-Mean"] == pytest.approx((out["J-Mean"] + out["F-Mean"]) / 2)
    assert 0.5 < out["F-Mean"] < 1 and out["num_objects"] == 1
    write_mask(res / "sq" / "00001.png", square(8, 8, 0, 0, 4))
    save = tmp_path / "davis.json"
    out = run(capsys, "davis", "--results", str(res), "--gt", str(davis_root), "--layout", "davis",
              "--save", str(save))
    assert {k: out[k] for k in ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall",
                                "F-Decay")} == {"J&F-Mean": 1.0, "J-Mean": 1.0, "J-Recall": 1.0,
                                                "J-Decay": 0.0, "F-Mean": 1.0, "F-Recall": 1.0,
                                                "F-Decay": 0.0}
    assert json.loads(save.read_text()) == out


def test_davis_empty_prediction_and_void(davis_root, tmp_path, capsys):
    """An all-background result scores J = F = 0 on a present object; void (255) in the ground
    truth is background for the semi-supervised protocol (the official code passes no void mask
    there), so predicted void pixels are false positives."""
    anno = davis_root / "Annotations" / "480p" / "sq"
    write_mask(anno / "00002.png", np.where(square(8, 8, 0, 0, 4) > 0, 1, 255))
    res = tmp_path / "res"
    write_mask(res / "sq" / "00001.png", np.zeros((8, 8)))
    write_mask(res / "sq" / "00002.png", square(8, 8, 0, 0, 5))  # 9 void pixels predicted
    out = run(capsys, "davis", "--results", str(res), "--gt", str(davis_root))
    assert out["J-Mean"] == pytest.approx((0 + 16 / 25) / 2)
    assert out["J-Decay"] == pytest.approx(0 - 16 / 25)
    assert out["J-Recall"] == 0.5 and out["F-Recall"] <= 0.5 and out["F-Mean"] < 0.5


@pytest.mark.parametrize("case, needle", [
    ("missing_frame", "00002.png"),
    ("missing_sequence", "sq/00001.png"),
    ("id_too_high", "object id 2"),
    ("wrong_size", "expected the ground truth's 8x8"),
    ("rgb", "RGB image"),
])
def test_davis_bad_results_are_named(davis_root, tmp_path, capsys, case, needle):
    res = tmp_path / "res"
    res.mkdir()
    if case != "missing_sequence":
        write_mask(res / "sq" / "00001.png", square(8, 8, 0, 0, 4))
    if case == "id_too_high":
        write_mask(res / "sq" / "00002.png", square(8, 8, 0, 0, 4, value=2))
    elif case == "wrong_size":
        write_mask(res / "sq" / "00002.png", np.zeros((8, 9)))
    elif case == "rgb":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(res / "sq" / "00002.png")
    err = fails(capsys, "davis", "--results", str(res), "--gt", str(davis_root))
    assert needle in err and "--results" in err, err


def test_davis_bad_ground_truth_is_named(tmp_path, capsys):
    (tmp_path / "res").mkdir()
    (tmp_path / "gt").mkdir()
    err = fails(capsys, "davis", "--results", str(tmp_path / "res"), "--gt", str(tmp_path / "gt"))
    assert "--layout" in err and str(tmp_path / "gt") in err
    err = fails(capsys, "davis", "--results", str(tmp_path / "res"), "--gt", str(tmp_path / "gt"),
                "--layout", "davis")
    assert "val.txt" in err
    labels = np.stack([square(8, 8, 0, 0, 4)] * 2)
    davis.write(tmp_path / "gt", "two", np.zeros((2, 8, 8, 3), np.uint8), labels, split="val")
    err = fails(capsys, "davis", "--results", str(tmp_path / "res"), "--gt", str(tmp_path / "gt"))
    assert "2 annotated frames" in err and "expected >= 3" in err


# ------------------------------------------------------------------------ Charades-STA


def test_charades_qids_are_line_numbers(tmp_path, capsys):
    """One reader (formats.charades_sta.read_queries): a blank line is skipped but counted."""
    txt = tmp_path / "charades_sta_test.txt"
    txt.write_text("AO8RW 0.0 10.0##a person opens a door.\n\nY6R7T 5.0 15.0##person sits.\n")
    sub = tmp_path / "preds.jsonl"
    sub.write_text(json.dumps({"qid": 0, "pred_relevant_windows": [[0.0, 10.0]]}) + "\n"
                   + json.dumps({"qid": 2, "pred_relevant_windows": [[10.0, 20.0]]}) + "\n")
    out = run(capsys, "charades", "--submission", str(sub), "--gt", str(txt))
    assert out["mIoU"] == round(100 * (1 + 1 / 3) / 2, 2) and out["R1@0.5"] == 50.0
    sub.write_text(json.dumps({"qid": 1, "pred_relevant_windows": [[0.0, 10.0]]}) + "\n")
    assert eval_main(["charades", "--submission", str(sub), "--gt", str(txt)]) == 1
    txt.write_text("AO8RW 0.0 10.0##ok.\nAO8RW 3.0 no separator\n")
    assert eval_main(["charades", "--submission", str(sub), "--gt", str(txt)]) == 1
    assert "charades_sta_test.txt:2" in capsys.readouterr().err

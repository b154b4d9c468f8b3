"""QVHighlights / Charades-STA file evaluators against the official numbers and by hand."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tpo.metrics import evaluate_charades_sta, evaluate_qvhighlights, load_jsonl
from tpo.metrics.cli import eval_main

REF = Path(__file__).resolve().parents[2] / "shared/reference/qvhighlights"
needs_ref = pytest.mark.skipif(
    not (REF / "highlight_val_release.jsonl").is_file(),
    reason=f"QVHighlights reference data not found at {REF} (only in the project workspace)",
)


@pytest.fixture(scope="module")
def qv_data():
    sub = load_jsonl(REF / "sample_val_preds.jsonl.gz")
    gt = load_jsonl(REF / "highlight_val_release.jsonl")
    raw = json.loads((REF / "sample_val_preds_metrics_raw.json").read_text())
    return sub, gt, raw


@needs_ref
def test_qvhighlights_reproduces_official_brief(qv_data):
    sub, gt, raw = qv_data
    assert len(gt) == 1550
    out = evaluate_qvhighlights(sub, gt)
    assert dict(out["brief"]) == raw["brief"]
    assert list(out["brief"]) == list(raw["brief"])
    # and every other printed number: per-threshold, per-bucket and per-level blocks
    assert json.loads(json.dumps(out)) == raw


@needs_ref
def test_cli_prints_official_json(qv_data, tmp_path, capsys):
    _, _, raw = qv_data
    save = tmp_path / "metrics.json"
    rc = eval_main(["qvhighlights", "--submission", str(REF / "sample_val_preds.jsonl.gz"),
                    "--gt", str(REF / "highlight_val_release.jsonl"), "--save", str(save)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.strip() == json.dumps(raw, indent=4)
    assert json.loads(save.read_text()) == raw


def _gt(qid, windows, duration=20, clips=None):
    clips = clips if clips is not None else []
    return {"qid": qid, "duration": duration, "relevant_windows": windows,
            "relevant_clip_ids": [c for c, _ in clips], "saliency_scores": [s for _, s in clips]}


def test_qvhighlights_hand_computed():
    # q1: GT [0,10]; preds (ranked) [0,10] (IoU 1), [20,30] (miss): AP = 1, R1 hit.
    # q2: GT [0,4],[10,14]; preds score-ranked: [10,12] (IoU .5) then [0,4] (IoU 1):
    #   at 0.5: tp, tp -> AP 1; at thr > .5: fp, tp -> precision 1/2 at recall 1/2 -> AP .25.
    gt = [_gt(1, [[0, 10]], clips=[(0, [4, 4, 4]), (1, [1, 1, 1])]),
          _gt(2, [[0, 4], [10, 14]], clips=[(5, [2, 3, 4])])]
    sub = [{"qid": 1, "pred_relevant_windows": [[0, 10, 0.9], [20, 30, 0.1]],
            "pred_saliency_scores": [0.1, 0.9] + [0.0] * 8},
           {"qid": 2, "pred_relevant_windows": [[0, 4, 0.2], [10, 12, 0.8]],
            "pred_saliency_scores": [0.0] * 5 + [1.0] + [0.0] * 4}]
    out = evaluate_qvhighlights(sub, gt)
    assert out["full"]["MR-mAP"]["0.5"] == 100.0
    assert out["full"]["MR-mAP"]["0.55"] == pytest.approx(100 * (1 + 0.25) / 2)
    assert out["full"]["MR-mAP"]["average"] == pytest.approx(100 * (1 + (1 + 9 * 0.25) / 10) / 2)
    # R1 uses the first listed window: q1 [0,10] hits; q2 [0,4] hits GT [0,4] exactly.
    assert out["full"]["MR-R1"]["0.95"] == 100.0
    # buckets: q1's 10 s window is "short" (0, 10]; q2's windows are 4 s: short too.
    assert out["short"]["MR-mAP"] == out["full"]["MR-mAP"]
    assert out["middle"]["MR-mAP"]["average"] == 0.0
    # highlights. q1 clip 0 (all 4) positive at every level, q1 top score at clip 1 (all 1s):
    # Hit1 0; q2 top clip 5 scores [2,3,4] -> hit at every level (max over annotators).
    assert out["brief"]["HL-min-Fair-Hit1"] == 50.0
    assert out["brief"]["HL-min-VeryGood-Hit1"] == 50.0
    # q1 AP: the positive clip 0 has score .1, second of the distinct scores .9 > .1 > 0:
    # thresholds .9 (precision 0/1, recall 0), .1 (1/2, recall 1) -> AP .5 per annotator.
    # q2 at Fair (>= 2): all three annotators mark clip 5, the top-scored -> AP 1 each.
    assert out["brief"]["HL-min-Fair-mAP"] == round(100 * (0.5 + 1.0) / 2, 2)
    # VeryGood (>= 4): q2 annotators 1, 2 have no positive -> AP 0; annotator 3 AP 1.
    assert out["brief"]["HL-min-VeryGood-mAP"] == round(100 * (0.5 + 1 / 3) / 2, 2)


def test_qvhighlights_bad_input():
    gt = [_gt(1, [[0, 10]]), _gt(2, [[2, 4]])]
    ok = [{"qid": 1, "pred_relevant_windows": [[0, 1, 1.0]]},
          {"qid": 2, "pred_relevant_windows": [[0, 1, 1.0]]}]
    evaluate_qvhighlights(ok, gt)
    with pytest.raises(ValueError, match="unknown qid.*7"):
        evaluate_qvhighlights(ok + [{"qid": 7, "pred_relevant_windows": [[0, 1, 1.0]]}], gt)
    with pytest.raises(ValueError, match="lacks qid.*2"):
        evaluate_qvhighlights(ok[:1], gt)
    bad = [ok[0], {"qid": 2, "pred_relevant_windows": [[5, 1, 1.0]]}]
    with pytest.raises(ValueError, match="qid 2.*start > end"):
        evaluate_qvhighlights(bad, gt)
    with pytest.raises(ValueError, match="qid 1.*start > end"):
        evaluate_qvhighlights(ok, [_gt(1, [[9, 3]]), gt[1]])
    with pytest.raises(ValueError, match="qid 2: ground truth has no relevant_windows"):
        evaluate_qvhighlights(ok, [gt[0], _gt(2, [])])
    with pytest.raises(ValueError, match="qid 1 appears twice"):
        evaluate_qvhighlights(ok + ok[:1], gt)
    with pytest.raises(ValueError, match="qid 2: pred_relevant_windows entries need"):
        evaluate_qvhighlights([ok[0], {"qid": 2, "pred_relevant_windows": [3.0]}], gt)
    hl = [{**r, "pred_saliency_scores": [0.5] * 10} for r in ok]
    with pytest.raises(ValueError, match="qid 2: relevant_clip_ids outside the 10 clips"):
        evaluate_qvhighlights(hl, [_gt(1, [[0, 10]]), _gt(2, [[2, 4]], clips=[(10, [1, 2, 3])])])
    with pytest.raises(ValueError, match="qid 2: saliency_scores needs one"):
        evaluate_qvhighlights(hl, [_gt(1, [[0, 10]]), _gt(2, [[2, 4]], clips=[(1, [1, 2])])])


def test_charades_hand_computed_and_cli(tmp_path, capsys):
    ann = [{"qid": 0, "relevant_windows": [[0.0, 10.0]]},
           {"qid": 1, "relevant_windows": [[5.0, 15.0]]},
           {"qid": 2, "relevant_windows": [[0.0, 4.0]]}]
    preds = [{"qid": 0, "pred_relevant_windows": [[0.0, 10.0, 0.5], [50, 60, 0.9]]},  # IoU 1
             {"qid": 1, "pred_relevant_windows": [[10.0, 20.0]]},  # 5 / 15 = 1/3
             {"qid": 2, "pred_relevant_windows": [[6.0, 8.0]]}]  # no overlap
    out = evaluate_charades_sta(preds, ann)
    assert out == {"R1@0.3": 66.67, "R1@0.5": 33.33, "R1@0.7": 33.33,
                   "mIoU": round(100 * (1 + 1 / 3) / 3, 2)}
    txt = tmp_path / "charades_sta_test.txt"
    txt.write_text("AO8RW 0.0 10.0##a person opens a door.\n"
                   "Y6R7T 5.0 15.0##person sits down.\nZZ1 0 4##a person laughs.\n")
    sub = tmp_path / "preds.jsonl.gz"
    with gzip.open(sub, "wt") as f:
        f.writelines(json.dumps(p) + "\n" for p in preds)
    assert eval_main(["charades", "--submission", str(sub), "--gt", str(txt)]) == 0
    assert json.loads(capsys.readouterr().out) == out
    assert eval_main(["charades", "--submission", str(tmp_path / "nope.jsonl"),
                      "--gt", str(txt)]) == 1
    assert "nope.jsonl" in capsys.readouterr().err

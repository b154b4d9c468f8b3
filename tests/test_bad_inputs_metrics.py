"""Bad-input corpus for the metrics: every case raises a ``ValueError`` (or warns) naming the
tensor / qid / sample and what was expected; nothing is scored silently."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from tpo.metrics import (
    EmptyMetricWarning,
    GOT10kMetrics,
    GroundingAccuracy,
    HighlightDetection,
    JAndF,
    MomentRetrieval,
    SaliencyLengthWarning,
    TrackingSuccess,
    evaluate_charades_sta,
    evaluate_qvhighlights,
)
from tpo.metrics import functional as TF

NAN, INF = float("nan"), float("inf")
T = torch.tensor


def f64(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------ QVHighlights rows
def _gt(qid, windows, duration=10):
    return {"qid": qid, "duration": duration, "relevant_windows": windows,
            "relevant_clip_ids": [0, 1, 2], "saliency_scores": [[1, 2, 3], [4, 4, 4], [0, 2, 1]]}


GT = [_gt(1, [[0, 4]]), _gt(2, [[2, 6]])]
SUB = [{"qid": 1, "pred_relevant_windows": [[0, 4, 0.9], [1, 5, 0.5]],
        "pred_saliency_scores": [0.9, 0.1, 0.5, 0.0, 0.2]},
       {"qid": 2, "pred_relevant_windows": [[2, 5, 0.8]],
        "pred_saliency_scores": [0.1, 0.8, 0.3, 0.2, 0.0]}]


def _sub(qid_index=None, **changes):
    sub = copy.deepcopy(SUB)
    if qid_index is not None:
        sub[qid_index].update(changes)
    return sub


def _gt_with(qid_index, **changes):
    gt = copy.deepcopy(GT)
    gt[qid_index].update(changes)
    return gt


def _drop(rows, index, key):
    rows = copy.deepcopy(rows)
    del rows[index][key]
    return rows


QVH_CASES = [
    ("qid missing", lambda: evaluate_qvhighlights(SUB[:1], GT), r"lacks qid\(s\) \[2\]"),
    ("qid duplicated", lambda: evaluate_qvhighlights(SUB + SUB[:1], GT), "qid 1 appears twice"),
    ("qid unknown", lambda: evaluate_qvhighlights(SUB + [{**SUB[0], "qid": 7}], GT),
     r"unknown qid\(s\) \[7\]"),
    ("gt qid duplicated", lambda: evaluate_qvhighlights(SUB, GT + GT[:1]),
     "ground_truth: qid 1 appears twice"),
    ("row without qid", lambda: evaluate_qvhighlights(_drop(SUB, 1, "qid"), GT),
     r"submission\[1\]: row has no 'qid'"),
    ("row is not a dict", lambda: evaluate_qvhighlights([SUB[0], [2, [[0, 1, 1]]]], GT),
     r"submission\[1\]: expected a dict"),
    ("row lacks windows", lambda: evaluate_qvhighlights(_drop(SUB, 1, "pred_relevant_windows"), GT),
     "qid 2: submission row has no 'pred_relevant_windows'"),
    ("row lacks saliency", lambda: evaluate_qvhighlights(_drop(SUB, 1, "pred_saliency_scores"), GT),
     "qid 2: submission row has no 'pred_saliency_scores'"),
    ("row has no prediction", lambda: evaluate_qvhighlights([{"qid": 1}, {"qid": 2}], GT),
     "qid 1: submission row has neither"),
    ("NaN window", lambda: evaluate_qvhighlights(
        _sub(0, pred_relevant_windows=[[0, 4, 0.9], [NAN, 5, 0.5]]), GT),
     r"qid 1: pred_relevant_windows has a non-finite entry \[nan, 5.0, 0.5\]"),
    ("NaN window score", lambda: evaluate_qvhighlights(
        _sub(1, pred_relevant_windows=[[2, 5, NAN]]), GT),
     "qid 2: pred_relevant_windows has a non-finite entry"),
    ("infinite window end", lambda: evaluate_qvhighlights(
        _sub(1, pred_relevant_windows=[[2, INF, 0.3]]), GT),
     "qid 2: pred_relevant_windows has a non-finite entry"),
    ("negative-width window", lambda: evaluate_qvhighlights(
        _sub(1, pred_relevant_windows=[[5, 2, 0.3]]), GT),
     "qid 2: pred_relevant_windows has a window with start > end"),
    ("NaN saliency", lambda: evaluate_qvhighlights(
        _sub(1, pred_saliency_scores=[0.1, NAN, 0.3, 0.2, 0.0]), GT),
     "qid 2: pred_saliency_scores has a non-finite value"),
    ("NaN ground-truth window", lambda: evaluate_qvhighlights(SUB, _gt_with(0, relevant_windows=[[NAN, 4]])),
     "qid 1: relevant_windows has a non-finite entry"),
    ("ground truth lacks duration", lambda: evaluate_qvhighlights(SUB, _drop(GT, 1, "duration")),
     "qid 2: ground_truth row has no 'duration'"),
    ("NaN duration", lambda: evaluate_qvhighlights(SUB, _gt_with(0, duration=NAN)),
     "qid 1: duration must be a finite number of seconds > 0"),
    ("zero duration", lambda: evaluate_qvhighlights(SUB, _gt_with(1, duration=0)),
     "qid 2: duration must be a finite number of seconds > 0"),
    ("ground truth lacks saliency", lambda: evaluate_qvhighlights(SUB, _drop(GT, 0, "saliency_scores")),
     "qid 1: ground_truth row has no 'saliency_scores'"),
    ("NaN annotator score", lambda: evaluate_qvhighlights(
        SUB, _gt_with(1, saliency_scores=[[1, 2, 3], [4, NAN, 4], [0, 2, 1]])),
     "qid 2: saliency_scores has a non-finite value"),
    ("charades NaN window", lambda: evaluate_charades_sta(
        _sub(0, pred_relevant_windows=[[NAN, 4, 0.9]]), GT),
     "qid 1: pred_relevant_windows has a non-finite entry"),
    ("charades qid missing", lambda: evaluate_charades_sta(SUB[1:], GT), r"lacks qid\(s\) \[1\]"),
    ("charades row lacks windows", lambda: evaluate_charades_sta(
        _drop(SUB, 0, "pred_relevant_windows"), GT),
     "qid 1: predictions row has no 'pred_relevant_windows'"),
]


# ------------------------------------------------------------------ metric classes
def _mr(preds, target):
    MomentRetrieval().update(preds, target)


def _hl(preds, target):
    HighlightDetection().update(preds, target)


OK_WINDOWS = [f64([[0, 4, 0.9]]), f64([[2, 5, 0.8], [1, 2, 0.1]])]
OK_GT = [f64([[0, 4]]), f64([[2, 6]])]
SALIENCY_GT = [f64([[1, 2, 3], [4, 4, 4], [0, 2, 1]])]
BOXES = f64([[0, 0, 10, 10], [5, 5, 20, 30]])
SEQ = f64([[0, 0, 10, 10], [1, 1, 10, 10], [2, 2, 10, 10], [3, 3, 10, 10], [4, 4, 10, 10]])
MASKS = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5


def _with(t, index, value):
    t = t.clone()
    t[index] = value
    return t


CLASS_CASES = [
    ("MR NaN window", lambda: _mr([OK_WINDOWS[0], _with(OK_WINDOWS[1], (1, 0), NAN)], OK_GT),
     r"preds\[1\]: row 1 is \[nan, 2.0, 0.1\]; expected finite"),
    ("MR NaN score", lambda: _mr([_with(OK_WINDOWS[0], (0, 2), NAN), OK_WINDOWS[1]], OK_GT),
     r"preds\[0\]: row 0 .*expected finite"),
    ("MR NaN target", lambda: _mr(OK_WINDOWS, [OK_GT[0], f64([[NAN, 6]])]),
     r"target\[1\]: row 0 is \[nan, 6.0\]; expected finite"),
    ("MR negative-width window", lambda: _mr([OK_WINDOWS[0], f64([[5, 2, 0.3]])], OK_GT),
     r"preds\[1\]: window with start > end"),
    ("MR negative-width target", lambda: _mr(OK_WINDOWS, [f64([[4, 0]]), OK_GT[1]]),
     r"target\[0\]: window with start > end"),
    ("MR pred/target count", lambda: _mr(OK_WINDOWS, OK_GT[:1]), "preds has 2 queries but target has 1"),
    ("MR preds not a list", lambda: _mr(OK_WINDOWS[1], OK_GT[:1] * 2), "preds: expected a list"),
    ("MR target of (G, 3)", lambda: _mr(OK_WINDOWS[:1], [f64([[0, 4, 1]])]),
     r"target\[0\]: expected shape \(n, 2\), got \(1, 3\)"),
    ("MR target without window", lambda: _mr(OK_WINDOWS[:1], [torch.zeros(0, 2)]),
     r"target\[0\]: no ground-truth window"),
    ("HL NaN saliency", lambda: _hl([f64([0.1, NAN, 0.3])], SALIENCY_GT),
     r"preds\[0\]: row 1 is \[nan\]; expected finite"),
    ("HL NaN annotator score", lambda: _hl([f64([0.1, 0.2, 0.3])], [_with(SALIENCY_GT[0], (2, 1), NAN)]),
     r"target\[0\]: row 2 .*expected finite"),
    ("HL saliency of (S, 1)", lambda: _hl([f64([[0.1], [0.2], [0.3]])], SALIENCY_GT),
     r"preds\[0\]: expected \(S,\) saliency, got \(3, 1\)"),
    ("HL wrong annotator count", lambda: _hl([f64([0.1] * 3)] * 2, [SALIENCY_GT[0], torch.zeros(3, 2)]),
     r"target\[1\]: expected \(C, 3\) annotator scores, got \(3, 2\)"),
    ("GA NaN pred box", lambda: GroundingAccuracy().update(_with(BOXES, (1, 2), NAN), BOXES),
     r"preds\[1\]: box \[5.0, 5.0, nan, 30.0\] is not finite"),
    ("GA NaN target box", lambda: GroundingAccuracy().update(BOXES, _with(BOXES, (0, 0), NAN)),
     r"target\[0\]: box .* is not finite"),
    ("GA negative-width pred", lambda: GroundingAccuracy().update(_with(BOXES, (0, 2), -3.0), BOXES),
     r"boxes1\[0\]: expected x2 >= x1 and y2 >= y1, got \[0.0, 0.0, -3.0, 10.0\] in preds\[0\]"),
    ("GA negative-height target", lambda: GroundingAccuracy().update(BOXES, _with(BOXES, (1, 3), 1.0)),
     r"boxes2\[1\]: expected x2 >= x1 and y2 >= y1, .* in target\[1\]"),
    ("GA box count mismatch", lambda: GroundingAccuracy().update(BOXES, BOXES[:1]),
     r"target: expected shape \(2, 4\) like preds, got \(1, 4\)"),
    ("GA mask of another size", lambda: GroundingAccuracy().update(MASKS, MASKS[:, :, :7]),
     r"target: expected shape \(2, 8, 8\) like preds, got \(2, 8, 7\)"),
    ("GA 4-D masks", lambda: GroundingAccuracy().update(MASKS[None], MASKS[None]),
     r"preds: expected \(N, 4\) xyxy boxes or \(N, H, W\) masks"),
    ("TS NaN pred", lambda: TrackingSuccess().update(_with(SEQ, (3, 1), NAN), SEQ),
     r"pred_xywh\[3\]: box \[3.0, nan, 10.0, 10.0\] is not finite"),
    ("TS negative-width gt", lambda: TrackingSuccess().update(SEQ, _with(SEQ, (1, 2), -2.0)),
     r"gt_xywh\[1\]: box .* has a negative width or height"),
    ("TS frame count mismatch", lambda: TrackingSuccess().update(SEQ, SEQ[:4]),
     r"gt_xywh: expected shape \(5, 4\), got \(4, 4\)"),
    ("TS valid of another length", lambda: TrackingSuccess().update(SEQ, SEQ, torch.ones(4).bool()),
     r"valid: expected shape \(5,\), got \(4,\)"),
    ("TS no valid frame", lambda: TrackingSuccess().update(SEQ, SEQ, torch.zeros(5, dtype=torch.bool)),
     "gt_xywh: sequence has no valid frame"),
    ("GOT NaN pred on a visible frame", lambda: GOT10kMetrics().update(_with(SEQ, (2, 0), NAN), SEQ),
     r"pred_xywh\[2\]: box .* is not finite"),
    ("GOT negative-height gt", lambda: GOT10kMetrics().update(SEQ, _with(SEQ, (4, 3), -1.0)),
     r"gt_xywh\[4\]: box .* has a negative width or height"),
    ("GOT bad image size", lambda: GOT10kMetrics().update(SEQ, SEQ, image_size=(640,)),
     r"image_size: expected \(width, height\) in pixels"),
    ("JF target of another size", lambda: JAndF().update(MASKS, torch.zeros(2, 8, 9, dtype=torch.bool)),
     r"target: expected shape \(2, 8, 8\) \(T, H, W\) like preds, got \(2, 8, 9\)"),
    ("JF target of another frame count", lambda: JAndF(drop_first_last=True).update(
        torch.zeros(4, 8, 8, dtype=torch.bool), torch.zeros(5, 8, 8, dtype=torch.bool)),
     r"target: expected shape \(4, 8, 8\) \(T, H, W\) like preds, got \(5, 8, 8\)"),
    ("JF void of another size", lambda: JAndF().update(MASKS, MASKS, torch.zeros(8, 8, dtype=torch.bool)),
     r"void: expected shape \(2, 8, 8\) \(T, H, W\) like preds, got \(8, 8\)"),
    ("JF NaN mask", lambda: JAndF().update(_with(MASKS.float(), (0, 1, 1), NAN), MASKS),
     "preds: mask holds NaN"),
]


# ------------------------------------------------------------------ functional
_P = f64([[[0, 4], [1, 3]]])
_PM = torch.ones(1, 2, dtype=torch.bool)
_G = f64([[[0, 4]]])
_GM = torch.ones(1, 1, dtype=torch.bool)
_LABELS = torch.ones(1, 4, 3, dtype=torch.bool)
_CLIPS = torch.ones(1, 4, dtype=torch.bool)

FUNCTIONAL_CASES = [
    ("box_iou NaN", lambda: TF.box_iou(_with(BOXES, (0, 1), NAN), BOXES),
     r"boxes1\[0\]: box .* is not finite; expected \(x1, y1, x2, y2\)"),
    ("box_iou negative width", lambda: TF.box_iou(BOXES, _with(BOXES, (1, 2), 0.0)),
     r"boxes2\[1\]: expected x2 >= x1 and y2 >= y1"),
    ("box_iou shape", lambda: TF.box_iou(BOXES, BOXES[:, :3]),
     r"boxes2: expected shape \(2, 4\) like boxes1"),
    ("rect_iou NaN", lambda: TF.rect_iou(SEQ, _with(SEQ, (0, 2), NAN)), r"rects2\[0\]: box .* is not finite"),
    ("success_curve no frames", lambda: TF.success_curve(torch.zeros(0, 4), torch.zeros(0, 4)),
     r"pred_xywh: expected \(N, 4\) boxes with N >= 1 frames"),
    ("success_curve negative gt", lambda: TF.success_curve(SEQ, _with(SEQ, (0, 2), -1.0)),
     r"gt_xywh\[0\]: box .* has a negative width or height"),
    ("precision_curve shape", lambda: TF.precision_curve(SEQ, SEQ[:2]),
     r"gt_xywh: expected shape \(5, 4\) like pred_xywh, got \(2, 4\)"),
    ("temporal_iou NaN", lambda: TF.temporal_iou(f64([[0, NAN]]), f64([[0, 1]])),
     r"spans_a\[0\]: span \[0.0, nan\] is not finite"),
    ("temporal_iou negative width", lambda: TF.temporal_iou(f64([[0, 1]]), f64([[0, 1], [3, 2]])),
     r"spans_b\[1\]: span \[3.0, 2.0\] has start > end"),
    ("cross_temporal_iou query mismatch", lambda: TF.cross_temporal_iou(_P, _G.expand(2, 1, 2)),
     r"gt: expected 1 queries like pred, got shape \(2, 1, 2\)"),
    ("cross_temporal_iou NaN", lambda: TF.cross_temporal_iou(_with(_P, (0, 1, 0), NAN), _G),
     r"pred\[0, 1\]: window \[nan, 3.0\] is not finite"),
    ("moment AP NaN score", lambda: TF.moment_average_precision(_P, f64([[0.9, NAN]]), _PM, _G, _GM),
     r"scores\[0, 1\]: score nan is not finite"),
    ("moment AP scores shape", lambda: TF.moment_average_precision(_P, f64([[0.9]]), _PM, _G, _GM),
     r"scores: expected shape \(1, 2\) like pred_mask, got \(1, 1\)"),
    ("moment AP mask shape", lambda: TF.moment_average_precision(_P, f64([[0.9, 0.1]]), _PM, _G, _PM),
     r"gt_mask: expected shape \(1, 1\) like gt, got \(1, 2\)"),
    ("moment R1 NaN gt", lambda: TF.moment_top1_iou(_P, _PM, _with(_G, (0, 0, 1), NAN), _GM),
     r"gt\[0, 0\]: window \[0.0, nan\] is not finite"),
    ("moment R1 negative-width pred", lambda: TF.moment_top1_iou(_with(_P, (0, 0, 0), 5.0), _PM, _G, _GM),
     r"pred\[0, 0\]: window \[5.0, 4.0\] has start > end"),
    ("highlight AP scores shape", lambda: TF.highlight_average_precision(
        f64([[0.1, 0.2, 0.3]]), _LABELS, _CLIPS),
     r"scores: expected shape \(1, 4\) like mask, got \(1, 3\)"),
    ("highlight AP NaN", lambda: TF.highlight_average_precision(f64([[0.1, 0.2, NAN, 0.0]]), _LABELS, _CLIPS),
     r"scores\[0, 2\]: score nan is not finite"),
    ("hit@1 query mismatch", lambda: TF.highlight_hit_at_one(
        f64([[0.1, 0.2]] * 2), torch.ones(2, 2, dtype=torch.bool), _LABELS, _CLIPS),
     r"labels: expected \(2, C, A\)"),
    ("region_similarity size", lambda: TF.region_similarity(MASKS, torch.zeros(2, 8, 9, dtype=torch.bool)),
     r"gt: expected shape \(2, 8, 8\) like pred, got \(2, 8, 9\)"),
    ("boundary_f_measure NaN", lambda: TF.boundary_f_measure(_with(MASKS.float(), (1, 0, 0), NAN), MASKS),
     "pred: mask holds NaN"),
    ("pad_windows non-tensor", lambda: TF.pad_windows([f64([[0, 1]]), [[0, 1]]], 2, "preds"),
     r"preds\[1\]: expected a \(n, 2\) tensor, got list"),
]


@pytest.mark.parametrize(("call", "message"), [c[1:] for c in QVH_CASES + CLASS_CASES + FUNCTIONAL_CASES],
                         ids=[c[0] for c in QVH_CASES + CLASS_CASES + FUNCTIONAL_CASES])
def test_bad_input_raises_a_named_value_error(call, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SaliencyLengthWarning)  # none of these is a length issue
        with pytest.raises(ValueError, match=message):
            call()


# ------------------------------------------------------------------ warnings, not errors
@pytest.mark.parametrize(("scores", "expected"), [
    ([0.9, 0.1, 0.5], [0.9, 0.1, 0.5, 0.0, 0.0]),  # short: zero-padded
    ([0.9, 0.1, 0.5, 0.0, 0.2, 0.7, 0.3], [0.9, 0.1, 0.5, 0.0, 0.2]),  # long: cut
])
def test_qvhighlights_saliency_of_the_wrong_length_warns_and_keeps_the_official_scores(scores, expected):
    with pytest.warns(SaliencyLengthWarning,
                      match=rf"qid 1: pred_saliency_scores has {len(scores)} scores for the 5 clips"):
        got = evaluate_qvhighlights(_sub(0, pred_saliency_scores=scores), GT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SaliencyLengthWarning)
        want = evaluate_qvhighlights(_sub(0, pred_saliency_scores=expected), GT)
    hl = {k: v for k, v in want["brief"].items() if k.startswith("HL")}
    assert all(got["brief"][k] == v for k, v in hl.items())
    if len(scores) > 5:  # the top-scored clip is in the kept part: identical HIT@1 too
        assert got == want


def test_highlight_detection_saliency_of_the_wrong_length_warns_and_pads():
    short, padded = HighlightDetection(), HighlightDetection()
    message = r"preds\[0\]: 2 saliency scores for the 3 clips of target\[0\]"
    with pytest.warns(SaliencyLengthWarning, match=message):
        short.update([f64([0.2, 0.9])], SALIENCY_GT)
    padded.update([f64([0.2, 0.9, 0.0])], SALIENCY_GT)
    assert {k: v.item() for k, v in short.compute().items()} == {
        k: v.item() for k, v in padded.compute().items()}


# ------------------------------------------------------------------ empty metrics
EMPTY = [
    (MomentRetrieval, "queries"),
    (HighlightDetection, "queries"),
    (GroundingAccuracy, "samples"),
    (TrackingSuccess, "sequences"),
    (GOT10kMetrics, "scored frames"),
    (JAndF, "objects"),
]


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # torchmetrics' own notice
@pytest.mark.parametrize(("cls", "what"), EMPTY, ids=[c.__name__ for c, _ in EMPTY])
def test_empty_metric_is_nan_with_a_warning_never_zero(cls, what):
    metric = cls()
    with pytest.warns(EmptyMetricWarning, match=rf"{cls.__name__}.compute\(\): no {what} accumulated"):
        out = metric.compute()
    assert out and all(bool(torch.isnan(v).all()) for v in out.values())


def test_empty_updates_count_as_empty():
    mr, got = MomentRetrieval(), GOT10kMetrics()
    mr.update([], [])
    got.update(SEQ, SEQ, torch.tensor([True, False, False, False, False]))  # only the skipped frame
    for metric in (mr, got):
        with pytest.warns(EmptyMetricWarning):
            assert all(math.isnan(v.item()) for v in metric.compute().values())


def test_grounding_ciou_of_all_empty_masks_is_lisa_zero():
    metric = GroundingAccuracy()
    empty = torch.zeros(2, 4, 4, dtype=torch.bool)
    metric.update(empty, empty)
    out = metric.compute()
    assert out["giou"] == 1 and out["ciou"] == 0  # LISA: no-object IoU 1; cIoU 0 / (0 + 1e-10)


def test_valid_inputs_still_score():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = evaluate_qvhighlights(SUB, GT)
        mr = MomentRetrieval()
        mr.update(OK_WINDOWS, OK_GT)
        values = mr.compute()
    assert out["brief"]["MR-full-R1@0.5"] == 100.0
    assert values["R1@0.5"] == 1

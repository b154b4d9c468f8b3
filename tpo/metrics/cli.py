"""``tpo eval``: score prediction files with the official protocols and print JSON.

``tpo eval qvhighlights --submission preds.jsonl[.gz] --gt highlight_val_release.jsonl``
prints what Moment-DETR's ``standalone_eval/eval.py`` prints (``json.dumps(..., indent=4)``).
``tpo eval charades --submission preds.jsonl --gt charades_sta_test.txt|annotations.jsonl``
prints R1@0.3/0.5/0.7 and mIoU; with a Charades-STA ``.txt`` file (``vid start end##query``
per line) the qid of a line is its 0-based index.

Tracking and grounding (``--results`` instead of ``--submission``):

``tpo eval lasot --results DIR --gt LASOT_ROOT [--sequences testing_set.txt] [--ignore-absent]``
scores ``DIR/<seq>.txt`` (one ``x,y,w,h`` line per frame, the GOT-10k toolkit's / LaSOT's
layout) with :class:`~tpo.metrics.TrackingSuccess` as the toolkit's ``ExperimentLaSOT`` does
(first prediction replaced by the ground truth; every frame counts unless ``--ignore-absent``):
success AUC, precision at 20 px, normalised precision, overall and per sequence.

``tpo eval got10k --results DIR --gt GOT10K_ROOT [--split val]`` scores
``DIR/<seq>/<seq>_001.txt`` (every ``<seq>_<k>.txt`` repetition is pooled, as the toolkit does)
with :class:`~tpo.metrics.GOT10kMetrics`: AO, SR@0.5, SR@0.75 over frames pooled across
sequences, frame 0 skipped, only frames with ``cover > 0`` (``cover.label``; ``absence.label``
when there is none), boxes clipped to the frame size.

``tpo eval refcoco --results preds.json --gt refs.json`` scores ``[{"ref_id", "box": [x1, y1,
x2, y2]}]`` (absolute pixels) against a flat grounding JSON (``formats.refcoco.read_flat``; a
row's ``id`` is its ref_id, its index when it has none) with
:class:`~tpo.metrics.GroundingAccuracy`: Acc@0.5, gIoU, cIoU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import zlib
from pathlib import Path

import numpy as np

from tpo.io import write_text_atomic
from tpo.metrics.qvhighlights import evaluate_charades_sta, evaluate_qvhighlights, load_jsonl

__all__ = ["eval_got10k", "eval_lasot", "eval_main", "eval_refcoco", "read_charades_sta_txt",
           "read_track_results"]

TRACKING = ("lasot", "got10k")
GROUNDING = ("refcoco",)


def read_charades_sta_txt(path: str | Path) -> list[dict]:
    """Charades-STA annotation lines ``vid start end##query`` -> rows with ``qid`` = line index."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Charades-STA annotation file")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        head, sep, query = line.partition("##")
        parts = head.split()
        if not sep or len(parts) != 3:
            raise ValueError(f"{path}:{i + 1}: expected 'vid start end##query', got {line!r}")
        rows.append({"qid": len(rows), "vid": parts[0], "query": query.strip(),
                     "relevant_windows": [[float(parts[1]), float(parts[2])]]})
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpo eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=["qvhighlights", "charades", *TRACKING, *GROUNDING])
    parser.add_argument("--submission", help="predictions, jsonl (.gz accepted) "
                        "(qvhighlights, charades)")
    parser.add_argument("--results", help="tracker results folder (lasot, got10k) or "
                        "predictions JSON (refcoco)")
    parser.add_argument("--gt", required=True, help="ground truth: jsonl (.gz) or Charades txt; "
                        "the LaSOT / GOT-10k root; the flat grounding JSON")
    parser.add_argument("--split", default="val", help="GOT-10k split folder (default val)")
    parser.add_argument("--sequences", help="LaSOT: file of sequence names to score, one per "
                        "line (testing_set.txt); default every sequence under --gt")
    parser.add_argument("--ignore-absent", action="store_true",
                        help="LaSOT: drop fully occluded / out-of-view frames")
    parser.add_argument("--save", help="also write the JSON to this file")
    return parser


#: What reading a damaged prediction or annotation file raises (truncated or non-gzip ``.gz``
#: files, binary or non-UTF-8 text, unreadable paths).
_READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)
_GZIP_MAGIC = b"\x1f\x8b"


def _read(path: str | Path, role: str, *, charades_txt: bool = False) -> list[dict]:
    """Rows of a jsonl(.gz) file (or, with ``charades_txt``, of a Charades-STA ``.txt`` file);
    any failure to read it is a ``ValueError`` / ``FileNotFoundError`` that names
    the file and its role (``--submission`` / ``--gt``)."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{role} {path}: is a directory, expected a jsonl file")
    if not path.is_file():
        raise FileNotFoundError(f"{role} {path}: no such file")
    try:
        if charades_txt and path.suffix == ".txt":
            return read_charades_sta_txt(path)
        return load_jsonl(path)
    except _READ_ERRORS as err:
        hint = ""
        if path.suffix == ".gz":
            hint = " (a damaged or truncated gzip file?)"
        elif path.read_bytes()[:2] == _GZIP_MAGIC:
            hint = " (it is gzip-compressed: name it *.gz)"
        raise ValueError(f"{role} {path}: cannot read it: {type(err).__name__}: {err}{hint}") from err
    except (ValueError, FileNotFoundError) as err:
        text = str(err)
        raise type(err)(text if str(path) in text else f"{role} {path}: {text}") from err


def _scalars(values: dict) -> dict[str, float]:
    """The scalar entries of a metric's ``compute()`` as floats (curves left out)."""
    return {k: float(v) for k, v in values.items() if getattr(v, "ndim", 0) == 0}


def read_track_results(path: str | Path, n_frames: int) -> np.ndarray:
    """``(n_frames, 4)`` boxes of a tracker results file (one ``x,y,w,h`` line per frame;
    commas, tabs or spaces between the numbers).

    Raises:
        FileNotFoundError: the file missing (named).
        ValueError: naming the file (and line): a line that is not 4 numbers, another number of
            lines than frames.
    """
    from tpo.datamodules.formats._io import read_boxes

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--results {path}: no such results file")
    try:
        boxes = read_boxes(path)
    except ValueError as err:
        raise ValueError(f"--results {err}") from None
    if boxes.shape[0] != n_frames:
        raise ValueError(f"--results {path}: {boxes.shape[0]} boxes for {n_frames} frames; "
                         f"expected one 'x,y,w,h' line per frame")
    return boxes


def _tensor(boxes: np.ndarray):
    import torch

    return torch.as_tensor(np.asarray(boxes, dtype=np.float64))


def _existing_folders(results_dir: str | Path, gt_root: str | Path, benchmark: str) -> str:
    """``results_dir`` as a string, after checking that it and the ground-truth root are folders."""
    results_dir = os.fspath(results_dir)
    if not os.path.isdir(results_dir):
        raise FileNotFoundError(f"--results {results_dir}: no such results folder")
    if not os.path.isdir(gt_root):
        raise FileNotFoundError(f"--gt {gt_root}: no such {benchmark} root folder")
    return results_dir


def eval_lasot(results_dir: str | Path, gt_root: str | Path, *,
               sequences: str | Path | None = None, ignore_absent: bool = False) -> dict:
    """LaSOT one-pass evaluation of ``results_dir/<seq>.txt`` (see the module docstring).

    Returns ``{"success", "precision", "norm_precision", "num_sequences", "sequences":
    {name: {"success", "precision", "norm_precision"}}}``.
    """
    from tpo.datamodules.formats import lasot
    from tpo.metrics.track import TrackingSuccess

    results_dir = _existing_folders(results_dir, gt_root, "LaSOT")
    samples = lasot.read(gt_root, sequences)
    if not samples:
        raise ValueError(f"--gt {gt_root}: no LaSOT sequence found")
    total = TrackingSuccess(replace_first=True)
    per_sequence = {}
    for sample in samples:
        path = os.path.join(results_dir, f"{sample.name}.txt")
        pred = _tensor(read_track_results(path, len(sample.boxes_xywh)))
        gt = _tensor(sample.boxes_xywh)
        valid = None
        if ignore_absent:
            import torch

            valid = torch.as_tensor(sample.visible)
        one = TrackingSuccess(replace_first=True)
        try:
            one.update(pred, gt, valid)
        except ValueError as err:
            raise ValueError(f"--results {path} against --gt {sample.name}: {err}") from None
        total.update(pred, gt, valid)
        per_sequence[sample.name] = _scalars(one.compute())
    return {**_scalars(total.compute()), "num_sequences": len(samples),
            "sequences": per_sequence}


def _cover(seq_dir: str, n: int) -> np.ndarray | None:
    """GOT-10k ``cover.label`` (0-8 per frame) when present, else ``None``."""
    from tpo.datamodules.formats._io import read_lines

    path = os.path.join(seq_dir, "cover.label")
    if not os.path.exists(path):
        return None
    values = []
    for line_no, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            values.append(int(float(line.strip())))
        except ValueError:
            raise ValueError(f"--gt {path}:{line_no}: expected a cover level 0-8, "
                             f"got {line!r}") from None
    if len(values) != n:
        raise ValueError(f"--gt {path}: {len(values)} cover levels for {n} frames, expected one "
                         f"per frame")
    return np.asarray(values)


_REPETITION = re.compile(r"_(\d+)\.txt$")


def eval_got10k(results_dir: str | Path, gt_root: str | Path, *, split: str = "val") -> dict:
    """GOT-10k evaluation of ``results_dir/<seq>/<seq>_<k>.txt`` (see the module docstring).

    Returns ``{"AO", "SR@0.5", "SR@0.75", "num_sequences", "sequences": {name: {"AO", "SR@0.5",
    "SR@0.75"}}}`` (a sequence without a scored frame has ``null`` values).
    """
    import torch

    from tpo.datamodules.formats import got10k
    from tpo.metrics.track import GOT10kMetrics

    results_dir = _existing_folders(results_dir, gt_root, "GOT-10k")
    samples = got10k.read(gt_root, split)
    if not samples:
        raise ValueError(f"--gt {gt_root}: no GOT-10k sequence in split {split!r}")
    total = GOT10kMetrics()
    per_sequence = {}
    for sample in samples:
        seq_results = os.path.join(results_dir, sample.name)
        files = sorted(os.path.join(seq_results, f) for f in (
            os.listdir(seq_results) if os.path.isdir(seq_results) else [])
            if f.startswith(sample.name) and _REPETITION.fullmatch(f[len(sample.name):]))
        if not files:
            raise FileNotFoundError(f"--results {os.path.join(seq_results, sample.name)}_001.txt:"
                                    f" no results for sequence {sample.name}")
        n = len(sample.boxes_xywh)
        cover = _cover(os.path.dirname(sample.frames[0]), n)
        visible = torch.as_tensor(cover > 0 if cover is not None else sample.visible)
        height, width = sample.image_size
        gt = _tensor(sample.boxes_xywh)
        one = GOT10kMetrics()
        for path in files:
            pred = _tensor(read_track_results(path, n))
            try:
                one.update(pred, gt, visible, (width, height))
            except ValueError as err:
                raise ValueError(f"--results {path} against --gt {sample.name}: {err}") from None
            total.update(pred, gt, visible, (width, height))
        per_sequence[sample.name] = (_scalars(one.compute()) if bool(one.frames > 0)
                                     else {"AO": None, "SR@0.5": None, "SR@0.75": None})
    if not bool(total.frames > 0):
        raise ValueError(f"--gt {gt_root}: no scored frame (every target hidden after frame 0)")
    return {**_scalars(total.compute()), "num_sequences": len(samples),
            "sequences": per_sequence}


def eval_refcoco(results: str | Path, gt: str | Path) -> dict:
    """Acc@0.5 / gIoU / cIoU of ``[{"ref_id", "box": [x1, y1, x2, y2]}]`` predictions against a
    flat grounding JSON; ref_ids are matched as strings (``3`` and ``"3"`` are the same ref).

    Raises:
        ValueError: naming the file (and ref): a prediction that is not an object with
            ``ref_id`` and ``box``, a box that is not 4 finite numbers or has ``x2 < x1`` /
            ``y2 < y1``, a ref_id twice (in either file), a ground-truth ref without a
            prediction, a prediction for a ref absent from the ground truth.
    """
    import torch

    from tpo.datamodules.formats._io import as_box, load_json, require
    from tpo.datamodules.formats.refcoco import read_flat
    from tpo.metrics.box import GroundingAccuracy

    for role, path in (("--results", results), ("--gt", gt)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{role} {path}: no such file")
    samples = read_flat(gt)
    truth: dict[str, np.ndarray] = {}
    for sample in samples:
        key = str(sample.ref_id)
        if key in truth:
            raise ValueError(f"--gt {gt}: ref_id {sample.ref_id!r} appears twice")
        truth[key] = sample.box_xyxy
    try:
        rows = load_json(results)
    except ValueError as err:
        raise ValueError(f"--results {err}") from None
    if not isinstance(rows, list):
        raise ValueError(f"--results {results}: expected a JSON list of "
                         f"{{\"ref_id\", \"box\"}} objects, got {type(rows).__name__}")
    preds: dict[str, list[float]] = {}
    for i, row in enumerate(rows):
        where = f"--results {results}: row {i}"
        require(row, ("ref_id", "box"), where, "a prediction")
        key = str(row["ref_id"])
        where = f"{where} (ref_id {row['ref_id']!r})"
        box = as_box(row["box"], where, "box (x1, y1, x2, y2)")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"{where}: box {box}: expected x1 <= x2 and y1 <= y2")
        if key in preds:
            raise ValueError(f"{where}: ref_id predicted twice")
        if key not in truth:
            raise ValueError(f"{where}: no such ref in --gt {gt}")
        preds[key] = box
    missing = [k for k in truth if k not in preds]
    if missing:
        raise ValueError(f"--results {results}: no prediction for {len(missing)} ref(s) of --gt "
                         f"{gt}, e.g. ref_id {missing[0]!r}")
    metric = GroundingAccuracy(iou_threshold=0.5)
    if truth:
        keys = list(truth)
        metric.update(torch.tensor([preds[k] for k in keys], dtype=torch.float64),
                      torch.as_tensor(np.stack([truth[k] for k in keys]), dtype=torch.float64))
    else:
        raise ValueError(f"--gt {gt}: no grounding row")
    return {**_scalars(metric.compute()), "num_samples": len(truth)}


def _print_results(results: dict, save: Path | None) -> int:
    text = json.dumps(results, indent=4)
    print(text)
    if save is not None:
        try:
            write_text_atomic(save, text)
        except OSError as err:
            print(f"tpo eval: error: --save {save}: {err}", file=sys.stderr)
            return 1
    return 0


def _eval_files(args: argparse.Namespace, save: Path | None) -> int:
    """``tpo eval lasot|got10k|refcoco``."""
    try:
        if args.benchmark == "lasot":
            results = eval_lasot(args.results, args.gt, sequences=args.sequences,
                                 ignore_absent=args.ignore_absent)
        elif args.benchmark == "got10k":
            results = eval_got10k(args.results, args.gt, split=args.split)
        else:
            results = eval_refcoco(args.results, args.gt)
    except (FileNotFoundError, ValueError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"tpo eval: error: {text}", file=sys.stderr)
        return 1
    except _READ_ERRORS as err:
        print(f"tpo eval: error: --results {args.results} / --gt {args.gt}: cannot read it: "
              f"{type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return _print_results(results, save)


def eval_main(argv: list[str]) -> int:
    """Run ``tpo eval``; returns the exit status (0 ok, 1 bad input file or contents, 2 bad
    arguments). Errors are one line on stderr naming the file (no traceback)."""
    parser = _parser()
    args = parser.parse_args(argv)
    file_benchmark = args.benchmark in TRACKING + GROUNDING
    if file_benchmark and args.results is None:
        parser.error(f"{args.benchmark}: the following arguments are required: --results")
    if not file_benchmark and args.submission is None:
        parser.error(f"{args.benchmark}: the following arguments are required: --submission")
    save = Path(args.save) if args.save else None
    if save is not None and not save.parent.is_dir():
        print(f"tpo eval: error: --save {save}: folder {save.parent} does not exist", file=sys.stderr)
        return 1
    if file_benchmark:
        return _eval_files(args, save)
    try:
        submission = _read(args.submission, "--submission")
        gt = _read(args.gt, "--gt", charades_txt=args.benchmark == "charades")
    except (FileNotFoundError, ValueError) as err:
        print(f"tpo eval: error: {err}", file=sys.stderr)
        return 1
    evaluate = evaluate_qvhighlights if args.benchmark == "qvhighlights" else evaluate_charades_sta
    try:
        results = evaluate(submission, gt)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:  # rows' contents
        detail = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
        print(f"tpo eval: error: --submission {args.submission} against --gt {args.gt}: {detail}",
              file=sys.stderr)
        return 1
    return _print_results(results, save)

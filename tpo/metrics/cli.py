"""``tpo eval``: score prediction files with the official protocols and print JSON.

``tpo eval qvhighlights --submission preds.jsonl[.gz] --gt highlight_val_release.jsonl``
prints what Moment-DETR's ``standalone_eval/eval.py`` prints (``json.dumps(..., indent=4)``).
``tpo eval charades --submission preds.jsonl --gt charades_sta_test.txt|annotations.jsonl``
prints R1@0.3/0.5/0.7 and mIoU; a Charades-STA ``.txt`` (or ``.txt.gz``) file (``vid
start end##query`` per line) is read by :func:`tpo.datamodules.formats.charades_sta.read_queries`:
the qid of a line is its 0-based line number (blank lines counted), as the data module numbers it.

Tracking and grounding (``--results`` instead of ``--submission``):

``tpo eval lasot --results DIR --gt LASOT_ROOT [--sequences testing_set.txt] [--ignore-absent]``
scores ``DIR/<seq>.txt`` (one ``x,y,w,h`` line per frame, the GOT-10k toolkit's / LaSOT's
layout) with :class:`~tpo.metrics.TrackingSuccess` as the toolkit's ``ExperimentLaSOT`` does
(first prediction replaced by the ground truth; every frame counts unless ``--ignore-absent``):
success AUC, precision at 20 px, normalised precision, overall and per sequence.

``tpo eval got10k --results DIR --gt GOT10K_ROOT [--split val]`` scores
``DIR/<seq>/<seq>_001.txt`` (every ``<seq>_<k>.txt`` repetition is pooled, as the toolkit does)
with the semantics of :class:`~tpo.metrics.GOT10kMetrics`: AO, SR@0.5, SR@0.75 over frames pooled
across sequences, frame 0 skipped, only frames with ``cover > 0`` (``cover.label``; ``absence.label``
when there is none), boxes clipped to the ``resolution: (W, H)`` of ``meta_info.ini`` (the frame
size when it has none), as the toolkit's ``ExperimentGOT10k.report``.

``tpo eval refcoco --results preds.json --gt refs.json`` scores ``[{"ref_id", "box": [x1, y1,
x2, y2]}]`` (absolute pixels) against a flat grounding JSON (``formats.refcoco.read_flat``; a
row's ``id`` is its ref_id, its index when it has none) with
:class:`~tpo.metrics.GroundingAccuracy`: Acc@0.5, gIoU, cIoU.

Video object segmentation:

``tpo eval davis --results DIR --gt DAVIS_ROOT [--split val] [--layout davis|mevis|refytvos]``
scores PNG masks ``DIR/<seq>/<frame>.png`` (palette index = object id, as the DAVIS server takes
them) with the DAVIS 2017 semi-supervised protocol of davis2017-evaluation: J&F-Mean, J-Mean,
J-Recall, J-Decay, F-Mean, F-Recall, F-Decay and per object ``<seq>_<k>`` J-Mean / F-Mean
(fractions). A MeViS or Ref-YouTube-VOS root (detected, or ``--layout``) is scored per expression
(``DIR/<vid>/<eid>/<frame>.png``) as MeViS' ``tools/eval_mevis.py`` does; see
:mod:`tpo.metrics.davis_eval`.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import re
import sys
import zlib
from pathlib import Path

import numpy as np

from tpo.io import write_text_atomic
from tpo.metrics.davis_eval import LAYOUTS, eval_davis
from tpo.metrics.qvhighlights import evaluate_charades_sta, evaluate_qvhighlights, load_jsonl

__all__ = ["eval_davis", "eval_got10k", "eval_lasot", "eval_main", "eval_refcoco",
           "read_charades_annotations", "read_track_results"]

TRACKING = ("lasot", "got10k")
GROUNDING = ("refcoco",)
SEGMENTATION = ("davis",)
FILE_BENCHMARKS = TRACKING + GROUNDING + SEGMENTATION


def read_charades_annotations(path: str | Path) -> list[dict]:
    """Charades-STA annotation lines ``vid start end##query`` as ground-truth rows ``{"qid",
    "vid", "query", "relevant_windows": [[start, end]]}`` (seconds); ``qid`` is the 0-based line
    number (:func:`tpo.datamodules.formats.charades_sta.read_queries`)."""
    from tpo.datamodules.formats.charades_sta import read_queries

    return [{"qid": q.qid, "vid": q.vid, "query": q.query, "relevant_windows": [[q.start, q.end]]}
            for q in read_queries(path)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpo eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=["qvhighlights", "charades", *FILE_BENCHMARKS])
    parser.add_argument("--submission", help="predictions, jsonl (.gz accepted) "
                        "(qvhighlights, charades)")
    parser.add_argument("--results", help="tracker results folder (lasot, got10k), "
                        "predictions JSON (refcoco) or folder of PNG masks (davis)")
    parser.add_argument("--gt", required=True, help="ground truth: jsonl (.gz) or Charades txt; "
                        "the LaSOT / GOT-10k / DAVIS / MeViS / Ref-YouTube-VOS root; the flat "
                        "grounding JSON")
    parser.add_argument("--split", help="GOT-10k split folder (default val); davis: DAVIS "
                        "ImageSets/2017/<split>.txt (default val), MeViS / Ref-YouTube-VOS split "
                        "folder (default valid_u / valid)")
    parser.add_argument("--layout", choices=LAYOUTS, help="davis: the ground truth's layout "
                        "(default: detected from --gt)")
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
        if charades_txt and path.name.endswith((".txt", ".txt.gz")):
            return read_charades_annotations(path)
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
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--results {path}: no such results file")
    boxes = _read_numbers(path, 4, "--results", "'x,y,w,h' (4 numbers)")
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


def _read_numbers(path: str, columns: int, role: str, what: str) -> np.ndarray:
    """``(N, columns)`` float64 of a text file with ``columns`` numbers on each non-empty line
    (commas, tabs or spaces between them; ``.gz`` accepted), parsed by NumPy's C reader.

    Raises:
        FileNotFoundError: the file missing, named after ``role`` (``--gt`` / ``--results``).
        ValueError: ``role path:line: expected <what>, got '<line>'`` for the first line that is
            not ``columns`` numbers.
    """
    from tpo.datamodules.formats._io import read_text

    try:
        text = read_text(path)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"{role} {err}") from None
    spaced = text.replace(",", " ")
    if not spaced.strip():
        return np.zeros((0, columns))
    try:
        values = np.loadtxt(io.StringIO(spaced), dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        values = None
    if values is not None and values.shape[1] == columns:
        return values
    lines = text.splitlines()
    bad = next(i for i, line in enumerate(lines) if line.strip() and not _numbers_line(line, columns))
    raise ValueError(f"{role} {path}:{bad + 1}: expected {what}, got {lines[bad]!r}")


def _numbers_line(line: str, columns: int) -> bool:
    """Whether ``line`` holds ``columns`` numbers (commas, tabs or spaces between them)."""
    values = line.replace(",", " ").split()
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return len(values) == columns


def _labels(seq_dir: str, name: str, n: int, allowed: range) -> np.ndarray | None:
    """Integer per-frame labels of ``seq_dir/<name>`` (``cover.label`` 0-8, ``absence.label``
    0/1), ``None`` when the file is absent; ``ValueError`` naming the file otherwise."""
    path = os.path.join(seq_dir, name)
    if not os.path.exists(path):
        return None
    what = f"one integer in {allowed.start}..{allowed.stop - 1}"
    values = _read_numbers(path, 1, "--gt", what)[:, 0]
    bad = np.flatnonzero((values != np.round(values)) | (values < allowed.start)
                         | (values >= allowed.stop))
    if len(bad):
        raise ValueError(f"--gt {path}: label {values[bad[0]]:g} of frame {bad[0]}: expected "
                         f"{what}")
    if len(values) != n:
        raise ValueError(f"--gt {path}: {len(values)} labels for {n} frames, expected one per "
                         f"frame")
    return values.astype(np.int64)


def _resolution(seq_dir: str, first_frame: str) -> tuple[float, float]:
    """``(width, height)`` that GOT-10k boxes are clipped to: ``resolution: (W, H)`` of the
    sequence's ``meta_info.ini`` (what the toolkit reads), else the first frame's size."""
    from tpo.datamodules.formats._frames import frame_size
    from tpo.datamodules.formats._io import read_lines

    path = os.path.join(seq_dir, "meta_info.ini")
    lines = read_lines(path) if os.path.isfile(path) else []
    for line_no, line in enumerate(lines, 1):
        key, sep, value = line.partition(":")
        if not sep or key.strip() != "resolution":
            continue
        try:
            size = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            size = None
        if (not isinstance(size, tuple) or len(size) != 2
                or not all(isinstance(v, (int, float)) and v > 0 for v in size)):
            raise ValueError(f"--gt {path}:{line_no}: expected 'resolution: (width, height)' "
                             f"with positive numbers, got {line.strip()!r}")
        return float(size[0]), float(size[1])
    height, width = frame_size(first_frame)
    return float(width), float(height)


_REPETITION = re.compile(r"_(\d+)\.txt$")


def _got10k_names(gt_root: str, split: str) -> tuple[str, list[str]]:
    """The split folder and its sequences (``list.txt``, every folder when there is none)."""
    from tpo.datamodules.formats._io import read_lines

    split_dir = os.path.join(gt_root, split)
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"--gt {split_dir}: GOT-10k split folder not found")
    list_path = os.path.join(split_dir, "list.txt")
    if os.path.exists(list_path):
        names = [line.strip() for line in read_lines(list_path) if line.strip()]
    else:
        names = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not names:
        raise ValueError(f"--gt {gt_root}: no GOT-10k sequence in split {split!r}")
    return split_dir, names


def _got10k_truth(seq_dir: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """``gt (N, 4)`` xywh, ``scored (N,)`` bool (``cover > 0``, ``absence == 0`` without a
    cover file; frame 0 never) and the clipping bound ``(W, H)`` of one GOT-10k sequence."""
    if not os.path.isdir(seq_dir):
        raise FileNotFoundError(f"--gt {seq_dir}: GOT-10k sequence folder not found")
    gt_path = os.path.join(seq_dir, "groundtruth.txt")
    gt = _read_numbers(gt_path, 4, "--gt", "'x,y,w,h' (4 numbers)")
    frames = [f for f in os.listdir(seq_dir) if f.endswith(".jpg")]
    if not frames:
        raise FileNotFoundError(f"--gt {seq_dir}: no .jpg frames in this GOT-10k sequence")
    if len(frames) != len(gt):
        raise ValueError(f"--gt {gt_path}: {len(gt)} boxes for {len(frames)} .jpg frames in "
                         f"{seq_dir}; expected one 'x,y,w,h' line per frame")
    cover = _labels(seq_dir, "cover.label", len(gt), range(9))
    if cover is None:
        absence = _labels(seq_dir, "absence.label", len(gt), range(2))
        scored = np.ones(len(gt), dtype=bool) if absence is None else absence == 0
    else:
        scored = cover > 0
    scored[:1] = False
    return gt, scored, _resolution(seq_dir, os.path.join(seq_dir, min(frames)))


def _got10k_results(results_dir: str, name: str, n: int) -> list[tuple[str, np.ndarray]]:
    """Every repetition ``results_dir/<name>/<name>_<k>.txt`` as ``(path, (n, 4) boxes)``."""
    seq_results = os.path.join(results_dir, name)
    files = sorted(os.path.join(seq_results, f) for f in (
        os.listdir(seq_results) if os.path.isdir(seq_results) else [])
        if f.startswith(name) and _REPETITION.fullmatch(f[len(name):]))
    if not files:
        raise FileNotFoundError(f"--results {os.path.join(seq_results, name)}_001.txt: no "
                                f"results for sequence {name}")
    return [(path, read_track_results(path, n)) for path in files]


def _check_boxes(boxes: np.ndarray, scored: np.ndarray, where: str, *, predicted: bool) -> None:
    """``ValueError`` naming ``where`` and the frame when a scored box is not finite (or, in the
    ground truth, has a negative width / height): :func:`~tpo.metrics.functional.check_xywh`."""
    rows = boxes[scored]
    if np.isfinite(rows).all() and (predicted or (rows[:, 2:] >= 0).all()):
        return
    import torch

    from tpo.metrics.functional.boxes import check_xywh

    try:
        check_xywh(torch.from_numpy(boxes), "frame", torch.from_numpy(scored),
                   allow_negative=predicted)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _got10k_ious(results_dir: str, seq_dir: str, name: str) -> np.ndarray:
    """IoUs of one sequence's scored frames, every repetition pooled (toolkit ``rect_iou``)."""
    import torch

    from tpo.metrics.functional.boxes import rect_iou

    gt, scored, bound = _got10k_truth(seq_dir)
    _check_boxes(gt, scored, f"--gt {os.path.join(seq_dir, 'groundtruth.txt')}", predicted=False)
    preds = []
    for path, boxes in _got10k_results(results_dir, name, len(gt)):
        _check_boxes(boxes, scored, f"--results {path}", predicted=True)
        preds.append(boxes[scored])
    pred = torch.from_numpy(np.concatenate(preds))
    truth = torch.from_numpy(np.tile(gt[scored], (len(preds), 1)))
    return rect_iou(pred, truth, bound=bound).numpy()


def _ao_sr(ious: np.ndarray) -> dict[str, float | None]:
    if len(ious) == 0:
        return {"AO": None, "SR@0.5": None, "SR@0.75": None}
    return {"AO": float(np.mean(ious)), "SR@0.5": float(np.mean(ious > 0.5)),
            "SR@0.75": float(np.mean(ious > 0.75))}


def eval_got10k(results_dir: str | Path, gt_root: str | Path, *, split: str = "val") -> dict:
    """GOT-10k evaluation of ``results_dir/<seq>/<seq>_<k>.txt`` as the toolkit's
    ``ExperimentGOT10k.report`` (see the module docstring; the semantics of
    :class:`~tpo.metrics.GOT10kMetrics`, with the IoUs of all sequences pooled in one array).

    Returns ``{"AO", "SR@0.5", "SR@0.75", "num_sequences", "sequences": {name: {"AO", "SR@0.5",
    "SR@0.75"}}}`` (a sequence without a scored frame has ``null`` values).

    Raises:
        FileNotFoundError / ValueError: naming the file (and line or frame): a missing results
            file, one of another length than the ground truth, a line that is not 4 numbers, a
            non-finite box on a scored frame, a cover / absence label out of range.
    """
    results_dir = _existing_folders(results_dir, gt_root, "GOT-10k")
    split_dir, names = _got10k_names(os.fspath(gt_root), split)
    per_sequence, pooled = {}, []
    for name in names:
        ious = _got10k_ious(results_dir, os.path.join(split_dir, name), name)
        per_sequence[name] = _ao_sr(ious)
        pooled.append(ious)
    total = np.concatenate(pooled)
    if len(total) == 0:
        raise ValueError(f"--gt {gt_root}: no scored frame (every target hidden after frame 0)")
    return {**_ao_sr(total), "num_sequences": len(names), "sequences": per_sequence}


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
    """``tpo eval lasot|got10k|refcoco|davis``."""
    try:
        if args.benchmark == "lasot":
            results = eval_lasot(args.results, args.gt, sequences=args.sequences,
                                 ignore_absent=args.ignore_absent)
        elif args.benchmark == "got10k":
            results = eval_got10k(args.results, args.gt, split=args.split or "val")
        elif args.benchmark == "davis":
            results = eval_davis(args.results, args.gt, split=args.split, layout=args.layout)
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
    file_benchmark = args.benchmark in FILE_BENCHMARKS
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

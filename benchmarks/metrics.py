"""Speed of tpo.metrics against the official evaluators, on the same inputs, in one run.

    python benchmarks/metrics.py --moment-detr PATH/TO/moment_detr --davis PATH/TO/davis2017-evaluation \
        --got10k PATH/TO/got10k-toolkit

``--moment-detr``: a checkout of jayleicn/moment_detr (needs numpy + scikit-learn); its
``standalone_eval.eval.eval_submission`` is timed on the 1,550 QVHighlights validation queries
(``--qvhighlights``, default ``../shared/reference/qvhighlights`` beside the repository), both as
shipped (``multiprocessing.Pool(8)``) and in one process. ``--davis``: a checkout of
davisvideochallenge/davis2017-evaluation (needs opencv + scikit-image); ``db_eval_iou`` +
``db_eval_boundary`` are timed on 100 synthetic 480p frames, and whole-folder scoring
(``tpo eval davis``: :func:`tpo.metrics.cli.eval_davis`) against its ``DAVISEvaluation(root,
"semi-supervised", "val").evaluate`` on a synthetic DAVIS 2017 folder (``--folder-sequences``
sequences of ``--folder-frames`` frames, two objects, PNG results). ``--got10k``: a checkout of
got-10k/toolkit (needs shapely, matplotlib, opencv, six, wget); ``tpo eval got10k``
(:func:`tpo.metrics.cli.eval_got10k`) is timed against ``ExperimentGOT10k(root, "val").report``
on a synthetic val split (``--tracks`` sequences of ``--track-frames`` frames, three
repetitions each). ``*_identical`` says every reported number (overall and per sequence / object)
agrees to 1e-12. The official code is never vendored: without a path (or without the packages it
needs) the script says so and prints only our timings. Ends with ``name: value (target ...)``
lines.

``--queries N`` takes the first N QVHighlights queries and ``--frames/--height/--width`` size
the J&F masks (``--height/--width`` also the DAVIS folder's frames); a smoke test runs tiny sizes
with ``--repeats 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tpo.metrics import evaluate_qvhighlights, load_jsonl
from tpo.metrics import functional as TF
from tpo.metrics.cli import eval_davis, eval_got10k

DEFAULT_QV = Path(__file__).resolve().parents[2] / "shared/reference/qvhighlights"


def median_time(fn, repeats: int) -> tuple[float, object]:
    """Median wall time over ``repeats`` calls (after one warm-up) and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


class _SerialPool:
    """Stand-in for ``multiprocessing.Pool``: the official code's own work, in one process."""

    def __init__(self, *_args, **_kwargs) -> None:
        pass

    def __enter__(self) -> _SerialPool:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def imap_unordered(self, fn, items, chunksize=1):
        return map(fn, items)


def bench_qvhighlights(moment_detr: Path | None, qv_dir: Path, repeats: int,
                       queries: int | None = None) -> list[str]:
    sub = load_jsonl(qv_dir / "sample_val_preds.jsonl.gz")
    gt = load_jsonl(qv_dir / "highlight_val_release.jsonl")
    if queries is not None:
        gt = gt[:queries]
        keep = {g["qid"] for g in gt}
        sub = [s for s in sub if s["qid"] in keep]
    ours_s, ours = median_time(lambda: evaluate_qvhighlights(sub, gt), repeats)
    print(f"QVHighlights, {len(gt)} queries: ours {ours_s:.3f} s")
    lines = [f"qvhighlights_ours_s: {ours_s:.4g} (target n/a)"]
    if moment_detr is None or not (moment_detr / "standalone_eval/eval.py").is_file():
        print(f"official Moment-DETR standalone_eval not found (--moment-detr {moment_detr}); "
              "skipping the comparison")
        return lines
    sys.path.insert(0, str(moment_detr))
    try:
        official = importlib.import_module("standalone_eval.eval")
    except ImportError as err:  # its own dependencies (numpy, scikit-learn)
        print(f"official Moment-DETR standalone_eval in {moment_detr} does not import ({err}); "
              "skipping the comparison")
        return lines
    with contextlib.redirect_stdout(sys.stderr):
        shipped_s, ref = median_time(lambda: official.eval_submission(sub, gt, verbose=False), 1)
        pool = official.mp.Pool
        official.mp.Pool = _SerialPool
        try:
            serial_s, ref_serial = median_time(
                lambda: official.eval_submission(sub, gt, verbose=False), 1)
        finally:
            official.mp.Pool = pool
    same = json.loads(json.dumps(ours)) == json.loads(json.dumps(ref)) == json.loads(
        json.dumps(ref_serial))
    print(f"official as shipped (Pool(8)) {shipped_s:.2f} s, in one process {serial_s:.2f} s")
    fastest = min(shipped_s, serial_s)
    return lines + [
        f"qvhighlights_official_s: {fastest:.4g} (target n/a)",
        f"qvhighlights_speedup: {fastest / ours_s:.1f} (target >= 20)",
        f"qvhighlights_identical: {str(same).lower()} (target true)",
    ]


def synthetic_masks(frames: int = 100, height: int = 480, width: int = 854, seed: int = 0):
    """Moving ellipses (prediction slightly off the target) with a little speckle noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    sy, sx = height / 480, width / 854  # the geometry is drawn for 480x854, scaled to the size
    gt = np.empty((frames, height, width), dtype=bool)
    pred = np.empty_like(gt)
    for t in range(frames):
        cy, cx = sy * (240 + 40 * np.sin(t / 15)), sx * (300 + 3 * t)
        gt[t] = ((yy - cy) / (140 * sy)) ** 2 + ((xx - cx) / (190 * sx)) ** 2 < 1
        pred[t] = ((yy - cy - 6 * sy) / (130 * sy)) ** 2 + ((xx - cx - 9 * sx) / (200 * sx)) ** 2 < 1
        pred[t] ^= rng.random((height, width)) < 0.001
    return pred, gt


def bench_j_and_f(davis: Path | None, repeats: int, frames: int = 100, height: int = 480,
                  width: int = 854) -> list[str]:
    pred, gt = synthetic_masks(frames, height, width)
    p, g = torch.from_numpy(pred), torch.from_numpy(gt)
    ours_s, (j, f) = median_time(lambda: TF.j_and_f(p, g), repeats)
    print(f"J&F, {len(pred)} frames {height}x{width}: ours {ours_s:.3f} s")
    lines = [f"jf_ours_s: {ours_s:.4g} (target n/a)"]
    path = None if davis is None else davis / "davis2017/metrics.py"
    if path is None or not path.is_file():
        print(f"official DAVIS davis2017/metrics.py not found (--davis {davis}); "
              "skipping the comparison")
        return lines
    spec = importlib.util.spec_from_file_location("davis2017_metrics", path)
    official = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(official)
    except ImportError as err:  # its own dependencies (opencv, scikit-image)
        print(f"official DAVIS {path} does not import ({err}); skipping the comparison")
        return lines

    def run_official():
        return official.db_eval_iou(gt, pred), official.db_eval_boundary(gt, pred)

    ref_s, (j_ref, f_ref) = median_time(run_official, max(1, repeats // 2))
    same = bool(np.array_equal(j.numpy(), j_ref) and np.array_equal(f.numpy(), f_ref))
    print(f"official {ref_s:.3f} s; J {j.mean():.4f} F {f.mean():.4f}")
    return lines + [
        f"jf_official_s: {ref_s:.4g} (target n/a)",
        f"jf_speedup: {ref_s / ours_s:.1f} (target >= 10)",
        f"jf_identical: {str(same).lower()} (target true)",
    ]


def _import_official(checkout: Path | None, module: str, what: str, flag: str):
    """``module`` imported from ``checkout``, or ``None`` after saying why the comparison is
    skipped (no path, no such package there, or its own dependencies missing)."""
    package = module.split(".")[0]
    if checkout is None or not (checkout / package).is_dir():
        print(f"official {what} not found ({flag} {checkout}); skipping the comparison")
        return None
    sys.path.insert(0, str(checkout))
    try:
        return importlib.import_module(module)
    except ImportError as err:
        print(f"official {what} in {checkout} does not import ({err}); skipping the comparison")
        return None
    finally:
        sys.path.remove(str(checkout))


def _close(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-12


def _write_label_png(path: Path, labels: np.ndarray) -> None:
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * (3 * 253))
    image.save(path)


def write_davis_folder(root: Path, results: Path, sequences: int, frames: int, height: int,
                       width: int) -> None:
    """A DAVIS 2017 val split of ``sequences`` x ``frames`` frames with two objects (the ellipses
    of :func:`synthetic_masks`, the second one mirrored) and PNG results for the scored frames."""
    (root / "ImageSets/2017").mkdir(parents=True)
    jpeg = root / "frame.jpg"
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(jpeg)
    for s in range(sequences):
        pred, gt = synthetic_masks(frames, height, width, seed=s)
        seq = f"seq{s:03d}"
        for folder in (root / "JPEGImages/480p" / seq, root / "Annotations/480p" / seq,
                       results / seq):
            folder.mkdir(parents=True)
        for t in range(frames):
            os.link(jpeg, root / "JPEGImages/480p" / seq / f"{t:05d}.jpg")
            _write_label_png(root / "Annotations/480p" / seq / f"{t:05d}.png",
                             np.where(gt[t, :, ::-1], 2, gt[t].astype(np.uint8)))
            if 0 < t < frames - 1:
                _write_label_png(results / seq / f"{t:05d}.png",
                                 np.where(pred[t, :, ::-1], 2, pred[t].astype(np.uint8)))
    (root / "ImageSets/2017/val.txt").write_text("".join(f"seq{s:03d}\n" for s in range(sequences)))


def _official_davis_numbers(metrics: dict) -> dict[str, float]:
    """The global table of ``evaluation_method.py`` and the per-object J / F means."""
    j, f = metrics["J"], metrics["F"]
    out = {"J&F-Mean": (np.mean(j["M"]) + np.mean(f["M"])) / 2}
    for m, values in (("J", j), ("F", f)):
        out.update({f"{m}-Mean": np.mean(values["M"]), f"{m}-Recall": np.mean(values["R"]),
                    f"{m}-Decay": np.mean(values["D"])})
        out.update({f"{name}/{m}-Mean": v for name, v in values["M_per_object"].items()})
    return {k: float(v) for k, v in out.items()}


def _our_davis_numbers(out: dict) -> dict[str, float]:
    numbers = {k: np.nan if out[k] is None else out[k] for k in (
        "J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")}
    for name, values in out["sequences"].items():
        numbers.update({f"{name}/{k}": v for k, v in values.items()})
    return numbers


def bench_davis_folder(davis: Path | None, repeats: int, sequences: int, frames: int, height: int,
                       width: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        root, results = Path(tmp) / "DAVIS", Path(tmp) / "results"
        write_davis_folder(root, results, sequences, frames, height, width)
        ours_s, out = median_time(lambda: eval_davis(results, root), repeats)
        print(f"DAVIS folder, {sequences} sequences x {frames} frames {height}x{width}, 2 objects: "
              f"ours {ours_s:.3f} s (J&F {out['J&F-Mean']:.4f})")
        lines = [f"davis_eval_ours_s: {ours_s:.4g} (target n/a)"]
        official = _import_official(davis, "davis2017.evaluation", "DAVIS davis2017.evaluation",
                                    "--davis")
        if official is None:
            return lines

        def run_official():
            with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
                return official.DAVISEvaluation(str(root), "semi-supervised", "val").evaluate(
                    str(results))

        ref_s, metrics = median_time(run_official, max(1, repeats // 2))
    ref, ours = _official_davis_numbers(metrics), _our_davis_numbers(out)
    same = ref.keys() == ours.keys() and all(_close(ours[k], v) for k, v in ref.items())
    print(f"official DAVISEvaluation {ref_s:.3f} s")
    return lines + [
        f"davis_eval_official_s: {ref_s:.4g} (target n/a)",
        f"davis_eval_speedup: {ref_s / ours_s:.1f} (target >= 10)",
        f"davis_eval_identical: {str(same).lower()} (target true)",
    ]


def write_got10k_folder(root: Path, results: Path, sequences: int, frames: int,
                        repetitions: int = 3, seed: int = 0) -> None:
    """A GOT-10k val split as the toolkit reads it (640x480, cover levels 0-8, boxes drifting
    and leaving the image) and ``repetitions`` noisy result files per sequence, tracker ``trk``."""
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    (root / "val").mkdir(parents=True)
    jpeg = root / "frame.jpg"
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(jpeg)
    names = [f"GOT-10k_Val_{s + 1:06d}" for s in range(sequences)]
    for name in names:
        seq, out = root / "val" / name, results / "GOT-10k" / "trk" / name
        seq.mkdir()
        out.mkdir(parents=True)
        for t in range(frames):
            os.link(jpeg, seq / f"{t + 1:08d}.jpg")
        wh = rng.uniform(20, 120, 2) + rng.normal(0, 2, (frames, 2)).cumsum(0).clip(-15, 15)
        xy = (rng.uniform(0, 1, 2) * ((width, height) - wh.max(0))
              + rng.normal(0, 4, (frames, 2)).cumsum(0)).clip(0, (width, height) - wh)
        gt = np.concatenate([xy, wh], 1)
        cover = rng.integers(0, 9, frames)
        cover[0] = 8
        np.savetxt(seq / "groundtruth.txt", gt, fmt="%.4f", delimiter=",")
        for label, values in (("cover", cover), ("absence", cover == 0),
                              ("cut_by_image", np.zeros(frames))):
            np.savetxt(seq / f"{label}.label", values, fmt="%d")
        (seq / "meta_info.ini").write_text(
            f"[METAINFO]\nobject_class: thing\nresolution: ({width}, {height})\n")
        for r in range(1, repetitions + 1):
            pred = gt + rng.normal(0, 10, gt.shape)
            pred[rng.random(frames) < 0.05, 0] += width / 2
            np.savetxt(out / f"{name}_{r:03d}.txt", pred, fmt="%.3f", delimiter=",")
        np.savetxt(out / f"{name}_time.txt", np.full((frames, repetitions), 0.01), fmt="%.8f",
                   delimiter=",")
    (root / "val/list.txt").write_text("\n".join(names) + "\n")


def bench_got10k(got10k: Path | None, repeats: int, sequences: int, frames: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        root, results = Path(tmp) / "GOT10k", Path(tmp) / "results"
        write_got10k_folder(root, results, sequences, frames)
        ours_s, out = median_time(lambda: eval_got10k(results / "GOT-10k" / "trk", root), repeats)
        print(f"GOT-10k, {sequences} sequences x {frames} frames x 3 repetitions: ours "
              f"{ours_s:.3f} s (AO {out['AO']:.4f})")
        lines = [f"got10k_eval_ours_s: {ours_s:.4g} (target n/a)"]
        official = _import_official(got10k, "got10k.experiments", "GOT-10k toolkit got10k.experiments",
                                    "--got10k")
        if official is None:
            return lines
        experiment = official.ExperimentGOT10k(str(root), subset="val", result_dir=str(results),
                                               report_dir=str(Path(tmp) / "reports"))

        def run_official():
            with contextlib.redirect_stdout(io.StringIO()):
                return experiment.report(["trk"], plot_curves=False)["trk"]

        ref_s, report = median_time(run_official, repeats)
    pairs = [(out["AO"], report["overall"]["ao"]), (out["SR@0.5"], report["overall"]["sr"]),
             (out["SR@0.75"], report["overall"]["succ_curve"][75])]
    for name, seq in report["seq_wise"].items():
        pairs += [(out["sequences"][name]["AO"], seq["ao"]), (out["sequences"][name]["SR@0.5"], seq["sr"])]
    same = len(report["seq_wise"]) == len(out["sequences"]) and all(_close(a, b) for a, b in pairs)
    print(f"official ExperimentGOT10k.report {ref_s:.3f} s; max |difference| "
          f"{max(abs(a - b) for a, b in pairs):.2g}")
    return lines + [
        f"got10k_eval_official_s: {ref_s:.4g} (target n/a)",
        f"got10k_eval_speedup: {ref_s / ours_s:.1f} (target >= 10)",
        f"got10k_eval_identical: {str(same).lower()} (target true)",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moment-detr", type=Path, help="checkout of jayleicn/moment_detr")
    parser.add_argument("--davis", type=Path, help="checkout of davis2017-evaluation")
    parser.add_argument("--got10k", type=Path, help="checkout of got-10k/toolkit")
    parser.add_argument("--qvhighlights", type=Path, default=DEFAULT_QV,
                        help="folder with highlight_val_release.jsonl + sample_val_preds.jsonl.gz")
    parser.add_argument("--queries", type=int, help="only the first N QVHighlights queries")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (median) per figure")
    parser.add_argument("--frames", type=int, default=100, help="J&F mask frames")
    parser.add_argument("--height", type=int, default=480, help="J&F mask height")
    parser.add_argument("--width", type=int, default=854, help="J&F mask width")
    parser.add_argument("--folder-sequences", type=int, default=3, help="DAVIS folder sequences")
    parser.add_argument("--folder-frames", type=int, default=30, help="frames per DAVIS sequence")
    parser.add_argument("--tracks", type=int, default=50, help="GOT-10k sequences")
    parser.add_argument("--track-frames", type=int, default=150, help="frames per GOT-10k sequence")
    args = parser.parse_args(argv)
    if (min(args.repeats, args.frames, args.folder_sequences, args.tracks) < 1
            or min(args.height, args.width) < 16 or min(args.folder_frames, args.track_frames) < 3):
        parser.error("--repeats, --frames, --folder-sequences, --tracks: expected >= 1; "
                     "--folder-frames, --track-frames: expected >= 3; --height, --width: expected "
                     ">= 16")
    if args.queries is not None and args.queries < 1:
        parser.error(f"--queries: expected >= 1, got {args.queries}")
    lines = []
    if (args.qvhighlights / "highlight_val_release.jsonl").is_file():
        lines += bench_qvhighlights(args.moment_detr, args.qvhighlights, args.repeats,
                                    args.queries)
    else:
        print(f"QVHighlights data not found in {args.qvhighlights}; skipping that benchmark")
    lines += bench_j_and_f(args.davis, args.repeats, args.frames, args.height, args.width)
    lines += bench_davis_folder(args.davis, args.repeats, args.folder_sequences, args.folder_frames,
                                args.height, args.width)
    lines += bench_got10k(args.got10k, args.repeats, args.tracks, args.track_frames)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

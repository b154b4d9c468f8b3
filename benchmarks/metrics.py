"""Speed of tpo.metrics against the official evaluators, on the same inputs, in one run.

    python benchmarks/metrics.py --moment-detr PATH/TO/moment_detr --davis PATH/TO/davis2017-evaluation

``--moment-detr``: a checkout of jayleicn/moment_detr (needs numpy + scikit-learn); its
``standalone_eval.eval.eval_submission`` is timed on the 1,550 QVHighlights validation queries
(``--qvhighlights``, default ``../shared/reference/qvhighlights`` beside the repository), both as
shipped (``multiprocessing.Pool(8)``) and in one process. ``--davis``: a checkout of
davisvideochallenge/davis2017-evaluation (needs opencv + scikit-image); ``db_eval_iou`` +
``db_eval_boundary`` are timed on 100 synthetic 480p frames. The official code is never
vendored: without a path (or without the packages it needs) the script says so and prints
only our timings. Ends with ``name: value (target ...)`` lines.

``--queries N`` takes the first N QVHighlights queries and ``--frames/--height/--width`` size
the J&F masks; a smoke test runs tiny sizes with ``--repeats 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tpo.metrics import evaluate_qvhighlights, load_jsonl
from tpo.metrics import functional as TF

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moment-detr", type=Path, help="checkout of jayleicn/moment_detr")
    parser.add_argument("--davis", type=Path, help="checkout of davis2017-evaluation")
    parser.add_argument("--qvhighlights", type=Path, default=DEFAULT_QV,
                        help="folder with highlight_val_release.jsonl + sample_val_preds.jsonl.gz")
    parser.add_argument("--queries", type=int, help="only the first N QVHighlights queries")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (median) per figure")
    parser.add_argument("--frames", type=int, default=100, help="J&F mask frames")
    parser.add_argument("--height", type=int, default=480, help="J&F mask height")
    parser.add_argument("--width", type=int, default=854, help="J&F mask width")
    args = parser.parse_args(argv)
    if min(args.repeats, args.frames) < 1 or min(args.height, args.width) < 16:
        parser.error("--repeats, --frames: expected >= 1; --height, --width: expected >= 16")
    if args.queries is not None and args.queries < 1:
        parser.error(f"--queries: expected >= 1, got {args.queries}")
    lines = []
    if (args.qvhighlights / "highlight_val_release.jsonl").is_file():
        lines += bench_qvhighlights(args.moment_detr, args.qvhighlights, args.repeats,
                                    args.queries)
    else:
        print(f"QVHighlights data not found in {args.qvhighlights}; skipping that benchmark")
    lines += bench_j_and_f(args.davis, args.repeats, args.frames, args.height, args.width)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

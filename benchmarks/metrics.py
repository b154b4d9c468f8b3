"""Speed of tpo.metrics against the official evaluators, on the same inputs, in one run.

    python benchmarks/metrics.py --moment-detr PATH/TO/moment_detr --davis PATH/TO/davis2017-evaluation

``--moment-detr``: a checkout of jayleicn/moment_detr (needs numpy + scikit-learn); its
``standalone_eval.eval.eval_submission`` is timed on the 1,550 QVHighlights validation queries
(``--qvhighlights``, default ``../shared/reference/qvhighlights`` beside the repository), both as
shipped (``multiprocessing.Pool(8)``) and in one process. ``--davis``: a checkout of
davisvideochallenge/davis2017-evaluation (needs opencv + scikit-image); ``db_eval_iou`` +
``db_eval_boundary`` are timed on 100 synthetic 480p frames. The official code is never
vendored: without a path the script says so and prints only our timings. Ends with
``name: value (target ...)`` lines.
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


def best_of(fn, repeats: int) -> tuple[float, object]:
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


def bench_qvhighlights(moment_detr: Path | None, qv_dir: Path, repeats: int) -> list[str]:
    sub = load_jsonl(qv_dir / "sample_val_preds.jsonl.gz")
    gt = load_jsonl(qv_dir / "highlight_val_release.jsonl")
    ours_s, ours = best_of(lambda: evaluate_qvhighlights(sub, gt), repeats)
    print(f"QVHighlights, {len(gt)} queries: ours {ours_s:.3f} s")
    lines = [f"qvhighlights_ours_s: {ours_s:.3f} (target n/a)"]
    if moment_detr is None or not (moment_detr / "standalone_eval/eval.py").is_file():
        print(f"official Moment-DETR standalone_eval not found (--moment-detr {moment_detr}); "
              "skipping the comparison")
        return lines
    sys.path.insert(0, str(moment_detr))
    official = importlib.import_module("standalone_eval.eval")
    with contextlib.redirect_stdout(sys.stderr):
        shipped_s, ref = best_of(lambda: official.eval_submission(sub, gt, verbose=False), 1)
        pool = official.mp.Pool
        official.mp.Pool = _SerialPool
        try:
            serial_s, ref_serial = best_of(
                lambda: official.eval_submission(sub, gt, verbose=False), 1)
        finally:
            official.mp.Pool = pool
    same = json.loads(json.dumps(ours)) == json.loads(json.dumps(ref)) == json.loads(
        json.dumps(ref_serial))
    print(f"official as shipped (Pool(8)) {shipped_s:.2f} s, in one process {serial_s:.2f} s")
    fastest = min(shipped_s, serial_s)
    return lines + [
        f"qvhighlights_official_s: {fastest:.2f} (target n/a)",
        f"qvhighlights_speedup: {fastest / ours_s:.1f} (target >= 20)",
        f"qvhighlights_identical: {str(same).lower()} (target true)",
    ]


def synthetic_masks(frames: int = 100, height: int = 480, width: int = 854, seed: int = 0):
    """Moving ellipses (prediction slightly off the target) with a little speckle noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    gt = np.empty((frames, height, width), dtype=bool)
    pred = np.empty_like(gt)
    for t in range(frames):
        cy, cx = 240 + 40 * np.sin(t / 15), 300 + 3 * t
        gt[t] = ((yy - cy) / 140) ** 2 + ((xx - cx) / 190) ** 2 < 1
        pred[t] = ((yy - cy - 6) / 130) ** 2 + ((xx - cx - 9) / 200) ** 2 < 1
        pred[t] ^= rng.random((height, width)) < 0.001
    return pred, gt


def bench_j_and_f(davis: Path | None, repeats: int) -> list[str]:
    pred, gt = synthetic_masks()
    p, g = torch.from_numpy(pred), torch.from_numpy(gt)
    ours_s, (j, f) = best_of(lambda: TF.j_and_f(p, g), repeats)
    print(f"J&F, {len(pred)} frames 480x854: ours {ours_s:.3f} s")
    lines = [f"jf_ours_s: {ours_s:.3f} (target n/a)"]
    path = None if davis is None else davis / "davis2017/metrics.py"
    if path is None or not path.is_file():
        print(f"official DAVIS davis2017/metrics.py not found (--davis {davis}); "
              "skipping the comparison")
        return lines
    spec = importlib.util.spec_from_file_location("davis2017_metrics", path)
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)

    def run_official():
        return official.db_eval_iou(gt, pred), official.db_eval_boundary(gt, pred)

    ref_s, (j_ref, f_ref) = best_of(run_official, max(1, repeats // 2))
    same = bool(np.array_equal(j.numpy(), j_ref) and np.array_equal(f.numpy(), f_ref))
    print(f"official {ref_s:.3f} s; J {j.mean():.4f} F {f.mean():.4f}")
    return lines + [
        f"jf_official_s: {ref_s:.3f} (target n/a)",
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
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    lines = []
    if (args.qvhighlights / "highlight_val_release.jsonl").is_file():
        lines += bench_qvhighlights(args.moment_detr, args.qvhighlights, args.repeats)
    else:
        print(f"QVHighlights data not found in {args.qvhighlights}; skipping that benchmark")
    lines += bench_j_and_f(args.davis, args.repeats)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

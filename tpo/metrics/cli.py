"""``tpo eval``: score prediction files with the official protocols and print JSON.

``tpo eval qvhighlights --submission preds.jsonl[.gz] --gt highlight_val_release.jsonl``
prints what Moment-DETR's ``standalone_eval/eval.py`` prints (``json.dumps(..., indent=4)``).
``tpo eval charades --submission preds.jsonl --gt charades_sta_test.txt|annotations.jsonl``
prints R1@0.3/0.5/0.7 and mIoU; with a Charades-STA ``.txt`` file (``vid start end##query``
per line) the qid of a line is its 0-based index.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tpo.metrics.qvhighlights import evaluate_charades_sta, evaluate_qvhighlights, load_jsonl

__all__ = ["eval_main", "read_charades_sta_txt"]


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
    parser.add_argument("benchmark", choices=["qvhighlights", "charades"])
    parser.add_argument("--submission", required=True, help="predictions, jsonl (.gz accepted)")
    parser.add_argument("--gt", required=True, help="ground truth, jsonl (.gz) or Charades txt")
    parser.add_argument("--save", help="also write the JSON to this file")
    return parser


def eval_main(argv: list[str]) -> int:
    """Run ``tpo eval``; returns the exit status (0 ok, 1 bad input file or contents)."""
    args = _parser().parse_args(argv)
    try:
        submission = load_jsonl(args.submission)
        if args.benchmark == "qvhighlights":
            results = evaluate_qvhighlights(submission, load_jsonl(args.gt))
        else:
            gt_path = Path(args.gt)
            gt = (read_charades_sta_txt(gt_path) if gt_path.suffix == ".txt"
                  else load_jsonl(gt_path))
            results = evaluate_charades_sta(submission, gt)
    except (FileNotFoundError, ValueError) as err:
        print(f"tpo eval: error: {err}", file=sys.stderr)
        return 1
    text = json.dumps(results, indent=4)
    print(text)
    if args.save:
        Path(args.save).write_text(text, encoding="utf-8")
    return 0

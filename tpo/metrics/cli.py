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
import zlib
from pathlib import Path

from tpo.io import write_text_atomic
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


def eval_main(argv: list[str]) -> int:
    """Run ``tpo eval``; returns the exit status (0 ok, 1 bad input file or contents, 2 bad
    arguments). Errors are one line on stderr naming the file (no traceback)."""
    args = _parser().parse_args(argv)
    save = Path(args.save) if args.save else None
    if save is not None and not save.parent.is_dir():
        print(f"tpo eval: error: --save {save}: folder {save.parent} does not exist", file=sys.stderr)
        return 1
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
    text = json.dumps(results, indent=4)
    print(text)
    if save is not None:
        try:
            write_text_atomic(save, text)
        except OSError as err:
            print(f"tpo eval: error: --save {save}: {err}", file=sys.stderr)
            return 1
    return 0

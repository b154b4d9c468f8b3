"""Reading annotation files with errors that name the file, the line and what was expected.

Text files may be gzip-compressed (a name ending in ``.gz``); a corrupt or truncated gzip file, a
file that is not UTF-8 text, or invalid JSON raises a ``ValueError`` naming the file (and, for
JSON, the line and column).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from typing import Any

import numpy as np

__all__ = ["as_box", "as_finite", "as_windows", "check_video_entry", "load_json", "loads_json_line",
           "read_boxes", "read_lines", "read_text", "require"]


def read_text(path: str | os.PathLike) -> str:
    """The whole text of ``path`` (gunzipped when it ends in ``.gz``).

    Raises:
        FileNotFoundError: naming the file.
        ValueError: a corrupt gzip file or bytes that are not UTF-8 text, naming the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: annotation file not found")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, expected an annotation file")
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({err}); expected "
                         f"gzip-compressed text") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); expected a "
                         f"text annotation file") from err


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of ``path`` without their line ends (see :func:`read_text`)."""
    return read_text(path).splitlines()


def load_json(path: str | os.PathLike) -> Any:
    """The parsed JSON of ``path`` (``.gz`` accepted); invalid JSON names the line and column."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{os.fspath(path)}: invalid JSON at line {err.lineno}, column "
                         f"{err.colno}: {err.msg}") from err


def loads_json_line(text: str, where: str) -> Any:
    """One JSON value of a jsonl line; ``where`` is ``"<file>:<line>"``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: invalid JSON at column {err.colno}: {err.msg}") from err


def require(row: Any, keys: tuple[str, ...], where: str, what: str = "an object") -> None:
    """Raise naming ``where`` unless ``row`` is a dict holding every key of ``keys``."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected {what} (a JSON object with keys "
                         f"{', '.join(keys)}), got {type(row).__name__} {str(row)[:60]}")
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: missing key{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(k) for k in missing)}; expected {what} with keys "
                         f"{', '.join(keys)}")



def check_video_entry(entry: Any, where: str) -> None:
    """A Ref-YouTube-VOS / MeViS ``meta_expressions.json`` video entry: an object with a non-empty
    ``frames`` list and an ``expressions`` object; the ``ValueError`` names ``where``."""
    require(entry, ("expressions", "frames"), where, "a video entry")
    if not isinstance(entry["frames"], list) or not entry["frames"]:
        raise ValueError(f"{where}: frames: expected a non-empty list of frame names")
    if not isinstance(entry["expressions"], dict):
        raise ValueError(f"{where}: expressions: expected an object {{eid: expression}}")

def as_finite(value: Any, where: str, what: str) -> float:
    """``value`` as a finite float, else a ``ValueError`` naming ``where`` and ``what``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what}: expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: {what}: expected a finite number, got {value!r}")
    return x


def as_windows(value: Any, where: str, what: str = "windows") -> np.ndarray:
    """``(n, 2)`` float windows from a list of ``[start, end]`` pairs (empty allowed)."""
    if value is None:
        return np.zeros((0, 2))
    try:
        w = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what}: expected a list of [start, end] pairs of numbers, "
                         f"got {str(value)[:80]}") from None
    if w.size == 0:
        return np.zeros((0, 2))
    if w.ndim != 2 or w.shape[1] != 2:
        raise ValueError(f"{where}: {what}: expected a list of [start, end] pairs, got "
                         f"{str(value)[:80]}")
    return w


def as_box(value: Any, where: str, what: str = "bbox") -> list[float]:
    """Four finite numbers."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"{where}: {what}: expected 4 numbers, got {str(value)[:80]}")
    return [as_finite(v, where, what) for v in value]


def read_boxes(path: str | os.PathLike) -> np.ndarray:
    """``(N, 4)`` float boxes of a ``groundtruth.txt`` (``x,y,w,h`` per line; commas, tabs or
    spaces between the numbers).

    Raises:
        FileNotFoundError: naming the file.
        ValueError: a line that is not 4 numbers, naming the file and line.
    """
    rows = []
    for line_no, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").split()
        try:
            row = [float(v) for v in parts]
        except ValueError:
            row = []
        if len(row) != 4:
            raise ValueError(f"{path}:{line_no}: expected 'x,y,w,h' (4 numbers), got {line!r}")
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)

"""Charades-STA: ``charades_sta_{train,test}.txt`` lines ``<vid> <start_s> <end_s>##<sentence>``
(``.gz`` accepted).

Durations are not in these files; they come from Charades' ``Charades_v1_{train,test}.csv``
(columns ``id`` and ``length``, seconds) or a mapping ``{vid: seconds}``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from typing import NamedTuple

from tpo.datamodules.formats._io import as_finite, read_lines, read_text
from tpo.datamodules.samples import MomentSample

__all__ = ["StaQuery", "read", "read_durations", "read_queries"]


class StaQuery(NamedTuple):
    """One annotation line: ``qid`` its 0-based line number, the moment in seconds."""

    qid: int
    vid: str
    start: float
    end: float
    query: str


def read_durations(path: str | os.PathLike) -> dict[str, float]:
    """``{vid: length_s}`` from a Charades ``Charades_v1_*.csv``.

    Raises:
        ValueError: columns ``id``/``length`` missing, or a length that is not a positive number
            (naming the file and line).
    """
    rows = list(csv.DictReader(io.StringIO(read_text(path))))
    if rows and not {"id", "length"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a Charades csv with columns 'id' and 'length', "
                         f"got {sorted(k for k in rows[0] if k is not None)}")
    durations = {}
    for line_no, row in enumerate(rows, 2):
        length = as_finite(row["length"], f"{path}:{line_no}", f"length of video {row['id']!r}")
        if length <= 0:
            raise ValueError(f"{path}:{line_no}: length of video {row['id']!r}: expected a "
                             f"positive duration in seconds, got {row['length']!r}")
        durations[row["id"]] = length
    return durations


def read_queries(path: str | os.PathLike) -> list[StaQuery]:
    """The annotation lines of a ``charades_sta_*.txt`` file, without durations (what an
    evaluator needs). ``qid`` is the 0-based line number: blank lines are skipped but counted,
    so a query keeps its qid whoever reads the file (:func:`read`, ``tpo eval charades``).

    Raises:
        ValueError: a malformed line (not ``<vid> <start> <end>##<sentence>``) or a start / end
            that is not a finite number (naming the file and line).
    """
    queries = []
    for qid, line in enumerate(read_lines(path)):
        line = line.strip()
        where = f"{path}:{qid + 1}"
        if not line:
            continue
        head, sep, sentence = line.partition("##")
        parts = head.split()
        if not sep or len(parts) != 3:
            raise ValueError(f"{where}: expected '<vid> <start> <end>##<sentence>', got {line!r}")
        start, end = (as_finite(v, where, f"{name} of {line!r}")
                      for v, name in zip(parts[1:], ("start", "end"), strict=True))
        queries.append(StaQuery(qid, parts[0], start, end, sentence.strip()))
    return queries


def read(path: str | os.PathLike, durations: Mapping[str, float] | str | os.PathLike
         ) -> list[MomentSample]:
    """One :class:`MomentSample` per line (``qid`` is the line number, from 0; see
    :func:`read_queries`).

    Args:
        path: a ``charades_sta_*.txt`` file.
        durations: ``{vid: seconds}`` or the path of a ``Charades_v1_*.csv``.

    Raises:
        ValueError: a malformed line (not ``<vid> <start> <end>##<sentence>`` with numbers), a
            video without duration, or a moment that is not finite, ends before it starts or lies
            beyond the duration (naming the file and line).
    """
    if not isinstance(durations, Mapping):
        durations = read_durations(durations)
    samples = []
    for q in read_queries(path):
        where = f"{path}:{q.qid + 1}"
        if q.vid not in durations:
            raise ValueError(f"{where}: no duration known for video {q.vid!r}")
        try:
            samples.append(MomentSample(vid=q.vid, query=q.query, windows=[[q.start, q.end]],
                                        duration=float(durations[q.vid]), qid=q.qid).validate())
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return samples

"""Charades-STA: ``charades_sta_{train,test}.txt`` lines ``<vid> <start_s> <end_s>##<sentence>``.

Durations are not in these files; they come from Charades' ``Charades_v1_{train,test}.csv``
(columns ``id`` and ``length``, seconds) or a mapping ``{vid: seconds}``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping

from tpo.datamodules.samples import MomentSample

__all__ = ["read", "read_durations"]


def read_durations(path: str | os.PathLike) -> dict[str, float]:
    """``{vid: length_s}`` from a Charades ``Charades_v1_*.csv``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"id", "length"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a Charades csv with columns 'id' and 'length', "
                         f"got {sorted(rows[0])}")
    return {row["id"]: float(row["length"]) for row in rows}


def read(path: str | os.PathLike, durations: Mapping[str, float] | str | os.PathLike
         ) -> list[MomentSample]:
    """One :class:`MomentSample` per line (``qid`` is the line number, from 0).

    Args:
        path: a ``charades_sta_*.txt`` file.
        durations: ``{vid: seconds}`` or the path of a ``Charades_v1_*.csv``.

    Raises:
        ValueError: a malformed line, a video without duration, or a moment beyond the duration
            (naming the line).
    """
    if not isinstance(durations, Mapping):
        durations = read_durations(durations)
    samples = []
    with open(path) as f:
        for qid, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            head, sep, sentence = line.partition("##")
            parts = head.split()
            if not sep or len(parts) != 3:
                raise ValueError(f"{path}:{qid + 1}: expected '<vid> <start> <end>##<sentence>', "
                                 f"got {line!r}")
            vid, start, end = parts[0], float(parts[1]), float(parts[2])
            if vid not in durations:
                raise ValueError(f"{path}:{qid + 1}: no duration known for video {vid!r}")
            samples.append(MomentSample(vid=vid, query=sentence.strip(), windows=[[start, end]],
                                        duration=durations[vid], qid=qid).validate())
    return samples

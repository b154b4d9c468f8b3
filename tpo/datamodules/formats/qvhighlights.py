"""QVHighlights jsonl (Moment-DETR) and its precomputed per-clip video features.

A row: ``{"qid", "query", "duration", "vid", "relevant_windows": [[s, e], ...],
"relevant_clip_ids": [i, ...], "saliency_scores": [[a1, a2, a3], ...]}``; clips are 2 s long,
saliency scores are 0-4 from three annotators, in the order of ``relevant_clip_ids``. The test
split has no windows or scores. ``.jsonl.gz`` files are read as well.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from tpo.datamodules.formats._io import as_finite, as_windows, loads_json_line, read_lines, require
from tpo.datamodules.samples import MomentSample

__all__ = ["load_video_features", "read", "write"]


def read(path: str | os.PathLike, *, clip_len: float = 2.0) -> list[MomentSample]:
    """One :class:`MomentSample` per row (``.jsonl`` or ``.jsonl.gz``).

    ``saliency`` is ``(ceil(duration / clip_len),)``: the annotators' mean score on each relevant
    clip, 0 elsewhere; ``None`` when the row has no scores.

    Raises:
        ValueError: naming the file and line (and the qid): invalid JSON or a corrupt gzip file,
            a row without ``qid``/``vid``/``query``/``duration``, windows that are not
            ``[start, end]`` pairs, not finite, inverted or beyond the duration, or a clip id
            beyond the last clip.
    """
    samples = []
    for line_no, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        row = loads_json_line(line, where)
        require(row, ("qid", "vid", "query", "duration"), where, "a QVHighlights row")
        where = f"{where}: qid {row['qid']}"
        duration = as_finite(row["duration"], where, "duration")
        windows = as_windows(row.get("relevant_windows"), where, "relevant_windows")
        saliency = None
        if row.get("saliency_scores") is not None:
            ids, scores = row.get("relevant_clip_ids"), row["saliency_scores"]
            num_clips = math.ceil(duration / clip_len - 1e-6) if duration > 0 else 0
            if not isinstance(ids, list) or not isinstance(scores, list) or len(ids) != len(
                    scores):
                raise ValueError(f"{where}: relevant_clip_ids {str(ids)[:60]} and saliency_scores "
                                 f"{str(scores)[:60]}: expected one list of annotator scores per "
                                 f"clip id")
            saliency = np.zeros(num_clips, dtype=np.float32)
            if ids:
                try:
                    ids = np.asarray(ids, dtype=np.int64)
                    scores = np.asarray(scores, dtype=np.float32).reshape(len(ids), -1)
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: relevant_clip_ids {str(ids)[:60]} and "
                                     f"saliency_scores {str(scores)[:60]}: expected integer clip "
                                     f"ids and the same number of scores for each") from None
                if ids.ndim != 1 or ids.min() < 0 or ids.max() >= num_clips or not scores.size:
                    raise ValueError(f"{where}: relevant_clip_ids {ids.tolist()} do not fit "
                                     f"{len(scores)} scores and {num_clips} clips")
                saliency[ids] = scores.mean(1)
        try:
            samples.append(MomentSample(vid=row["vid"], query=row["query"], windows=windows,
                                        duration=duration, qid=row["qid"], saliency=saliency,
                                        clip_len=clip_len).validate())
        except ValueError as err:
            raise ValueError(f"{path}:{line_no}: {err}") from None
    return samples


def write(path: str | os.PathLike, samples: Iterable[MomentSample]) -> None:
    """Write samples as QVHighlights jsonl; clips with saliency > 0 become ``relevant_clip_ids``
    and their score is repeated for the three annotators (integer scores round-trip exactly)."""
    with open(path, "w") as f:
        for s in samples:
            row = {"qid": s.qid, "query": s.query, "duration": s.duration, "vid": s.vid,
                   "relevant_windows": s.windows.tolist()}
            if s.saliency is not None:
                ids = np.flatnonzero(s.saliency > 0)
                row["relevant_clip_ids"] = ids.tolist()
                row["saliency_scores"] = [[float(s.saliency[i])] * 3 for i in ids]
            f.write(json.dumps(row) + "\n")


def load_video_features(feature_dirs: Sequence[str | os.PathLike], vid: str, *,
                        normalize: bool = True) -> np.ndarray:
    """``(num_clips, sum D)`` float32 per-clip features of ``vid``, as Moment-DETR loads them.

    Each directory holds ``<vid>.npz`` (key ``"features"``) or ``<vid>.npy``; features are L2
    normalised per clip when ``normalize``, truncated to the shortest, and concatenated.

    Raises:
        FileNotFoundError: naming the missing feature file.
    """
    feats = []
    for folder in feature_dirs:
        npz, npy = os.path.join(folder, f"{vid}.npz"), os.path.join(folder, f"{vid}.npy")
        if os.path.exists(npz):
            with np.load(npz) as data:
                if "features" not in data:
                    raise ValueError(f"{npz}: expected an array named 'features', got "
                                     f"{list(data.keys())}")
                x = data["features"]
        elif os.path.exists(npy):
            x = np.load(npy)
        else:
            raise FileNotFoundError(f"{npz} (or .npy): video features for {vid!r} not found")
        x = np.asarray(x, dtype=np.float32).reshape(x.shape[0], -1)
        if normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        feats.append(x)
    length = min(x.shape[0] for x in feats)
    return np.concatenate([x[:length] for x in feats], axis=1)

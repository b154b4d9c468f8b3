"""QVHighlights jsonl (Moment-DETR) and its precomputed per-clip video features.

A row: ``{"qid", "query", "duration", "vid", "relevant_windows": [[s, e], ...],
"relevant_clip_ids": [i, ...], "saliency_scores": [[a1, a2, a3], ...]}``; clips are 2 s long,
saliency scores are 0-4 from three annotators, in the order of ``relevant_clip_ids``. The test
split has no windows or scores.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from tpo.datamodules.samples import MomentSample

__all__ = ["load_video_features", "read", "write"]


def read(path: str | os.PathLike, *, clip_len: float = 2.0) -> list[MomentSample]:
    """One :class:`MomentSample` per row.

    ``saliency`` is ``(ceil(duration / clip_len),)``: the annotators' mean score on each relevant
    clip, 0 elsewhere; ``None`` when the row has no scores.

    Raises:
        ValueError: a window beyond the duration or a clip id beyond the last clip (naming the
            qid and line).
    """
    samples = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            duration = float(row["duration"])
            saliency = None
            if row.get("saliency_scores") is not None:
                ids, scores = row["relevant_clip_ids"], row["saliency_scores"]
                num_clips = math.ceil(duration / clip_len - 1e-6)
                if len(ids) != len(scores) or (ids and max(ids) >= num_clips):
                    raise ValueError(f"{path}:{line_no}: qid {row['qid']}: relevant_clip_ids "
                                     f"{ids} do not fit {len(scores)} scores and {num_clips} clips")
                saliency = np.zeros(num_clips, dtype=np.float32)
                saliency[ids] = np.asarray(scores, dtype=np.float32).reshape(len(ids), -1).mean(1)
            samples.append(MomentSample(vid=row["vid"], query=row["query"],
                                        windows=row.get("relevant_windows") or [],
                                        duration=duration, qid=row["qid"], saliency=saliency,
                                        clip_len=clip_len).validate())
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

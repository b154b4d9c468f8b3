"""ActivityNet Captions json:
``{vid: {"duration": s, "timestamps": [[s, e], ...], "sentences": [...]}}``.

Video ids keep their ``v_`` prefix, as the json files have them. ``.json.gz`` is read as well.
"""

from __future__ import annotations

import os

import numpy as np

from tpo.datamodules.formats._io import as_finite, as_windows, load_json, require
from tpo.datamodules.samples import MomentSample

__all__ = ["read"]


def read(path: str | os.PathLike, *, clamp: bool = False) -> list[MomentSample]:
    """One :class:`MomentSample` per sentence, ``qid = "<vid>_<index>"``.

    Args:
        path: ``train.json`` / ``val_1.json`` / ``val_2.json``.
        clamp: clip moment ends to the video duration (some official annotations overshoot by a
            fraction of a second); off by default, so such a moment raises.

    Raises:
        ValueError: naming the file and the video: invalid JSON (line and column), an entry
            without ``duration``/``timestamps``/``sentences``, ``timestamps`` and ``sentences``
            of different lengths, a timestamp that is not a ``[start, end]`` pair of finite
            numbers, or a moment outside ``[0, duration]`` or inverted (when not clamped).
    """
    data = load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{video id: {{duration, timestamps, "
                         f"sentences}}}}, got a {type(data).__name__}")
    samples = []
    for vid, entry in data.items():
        where = f"{path}: video {vid}"
        require(entry, ("duration", "timestamps", "sentences"), where,
                "an ActivityNet Captions entry")
        stamps, sentences = entry["timestamps"], entry["sentences"]
        if not isinstance(sentences, list) or not all(isinstance(x, str) for x in sentences):
            raise ValueError(f"{where}: sentences: expected a list of strings")
        windows = as_windows(stamps, where, "timestamps")
        if len(windows) != len(sentences):
            raise ValueError(f"{path}: video {vid} has {len(windows)} timestamps but "
                             f"{len(sentences)} sentences")
        duration = as_finite(entry["duration"], where, "duration")
        if not np.isfinite(windows).all():  # before clamping, which would hide them
            bad = windows[~np.isfinite(windows).all(1)][0].tolist()
            raise ValueError(f"{where}: timestamp {bad} is not finite; expected [start, end] "
                             f"seconds")
        for i, ((start, end), sentence) in enumerate(zip(windows, sentences, strict=True)):
            if clamp:
                start, end = max(0.0, float(start)), min(duration, float(end))
            try:
                samples.append(MomentSample(vid=vid, query=sentence.strip(),
                                            windows=[[start, end]], duration=duration,
                                            qid=f"{vid}_{i}").validate())
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
    return samples

"""ActivityNet Captions json:
``{vid: {"duration": s, "timestamps": [[s, e], ...], "sentences": [...]}}``.

Video ids keep their ``v_`` prefix, as the json files have them.
"""

from __future__ import annotations

import json
import os

from tpo.datamodules.samples import MomentSample

__all__ = ["read"]


def read(path: str | os.PathLike, *, clamp: bool = False) -> list[MomentSample]:
    """One :class:`MomentSample` per sentence, ``qid = "<vid>_<index>"``.

    Args:
        path: ``train.json`` / ``val_1.json`` / ``val_2.json``.
        clamp: clip moment ends to the video duration (some official annotations overshoot by a
            fraction of a second); off by default, so such a moment raises.

    Raises:
        ValueError: ``timestamps`` and ``sentences`` differ in length, or a moment lies outside
            ``[0, duration]`` (when not clamped), naming the video.
    """
    with open(path) as f:
        data = json.load(f)
    samples = []
    for vid, entry in data.items():
        stamps, sentences = entry["timestamps"], entry["sentences"]
        if len(stamps) != len(sentences):
            raise ValueError(f"{path}: video {vid} has {len(stamps)} timestamps but "
                             f"{len(sentences)} sentences")
        duration = float(entry["duration"])
        for i, ((start, end), sentence) in enumerate(zip(stamps, sentences, strict=True)):
            if clamp:
                start, end = max(0.0, float(start)), min(duration, float(end))
            samples.append(MomentSample(vid=vid, query=sentence.strip(), windows=[[start, end]],
                                        duration=duration, qid=f"{vid}_{i}").validate())
    return samples

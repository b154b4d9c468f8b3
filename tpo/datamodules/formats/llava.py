"""LLaVA conversation JSON: a list of ``{"id", "image" | "video": path, "conversations":
[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from tpo.datamodules.samples import ConversationSample

__all__ = ["read", "write"]


def read(path: str | os.PathLike, media_root: str | os.PathLike = "") -> list[ConversationSample]:
    """One :class:`ConversationSample` per entry; media paths joined to ``media_root``.

    Raises:
        ValueError: turns that do not alternate human/gpt, naming the entry.
    """
    with open(path) as f:
        rows = json.load(f)
    samples = []
    for i, row in enumerate(rows):
        kind = "video" if "video" in row else "image" if "image" in row else None
        media = os.path.join(media_root, row[kind]) if kind else None
        samples.append(ConversationSample(media=media, conversations=row["conversations"],
                                          kind=kind, id=row.get("id", i)).validate())
    return samples


def write(path: str | os.PathLike, samples: Iterable[ConversationSample],
          media_root: str | os.PathLike = "") -> None:
    """Write samples as LLaVA JSON, media paths relative to ``media_root``."""
    rows = []
    for s in samples:
        row = {"id": s.id}
        if s.kind:
            row[s.kind] = os.path.relpath(s.media, media_root) if media_root else s.media
        row["conversations"] = s.conversations
        rows.append(row)
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)

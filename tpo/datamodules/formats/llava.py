"""LLaVA conversation JSON: a list of ``{"id", "image" | "video": path, "conversations":
[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from tpo.datamodules.formats._io import load_json, require
from tpo.datamodules.samples import ConversationSample

__all__ = ["read", "write"]


def read(path: str | os.PathLike, media_root: str | os.PathLike = "") -> list[ConversationSample]:
    """One :class:`ConversationSample` per entry; media paths joined to ``media_root``
    (``.json.gz`` is read as well).

    Raises:
        ValueError: naming the file and the entry: invalid JSON (line and column), a top level
            that is not a list, an entry without ``conversations``, a media path that is not a
            string, turns that do not alternate human/gpt.
    """
    rows = load_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA entries, got "
                         f"{type(rows).__name__}")
    samples = []
    for i, row in enumerate(rows):
        where = f"{path}: entry {i}" + (f" (id {row['id']})" if isinstance(row, dict) and
                                        "id" in row else "")
        require(row, ("conversations",), where, "a LLaVA entry")
        kind = "video" if "video" in row else "image" if "image" in row else None
        if kind and not isinstance(row[kind], str):
            raise ValueError(f"{where}: {kind}: expected a media path string, got "
                             f"{str(row[kind])[:60]}")
        media = os.path.join(media_root, row[kind]) if kind else None
        try:
            samples.append(ConversationSample(media=media, conversations=row["conversations"],
                                              kind=kind, id=row.get("id", i)).validate())
        except ValueError as err:
            raise ValueError(f"{path}: entry {i}: {err}") from None
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

"""Shared helpers for frame-folder formats: writing JPEG frames, palette PNG label maps."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["DAVIS_PALETTE", "read_label_map", "write_frames", "write_label_map"]


def _davis_palette() -> list[int]:
    # The DAVIS / PASCAL VOC colour map: bit-interleaved RGB from the label index.
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


DAVIS_PALETTE = _davis_palette()


def write_frames(folder: str | os.PathLike, frames: np.ndarray | Sequence[str],
                 names: list[str], quality: int = 95) -> list[str]:
    """Write frames as JPEG ``folder/<name>``; returns the paths.

    Args:
        frames: ``(T, H, W, 3)`` uint8 to encode, or paths of JPEG files already written, which
            are hard-linked (copied where links are not possible) instead of encoded again.
    """
    os.makedirs(folder, exist_ok=True)
    paths = []
    for frame, name in zip(frames, names, strict=True):
        path = os.path.join(folder, name)
        if isinstance(frame, (str, os.PathLike)):
            try:
                os.link(frame, path)
            except OSError:
                shutil.copyfile(frame, path)
        else:
            Image.fromarray(frame).save(path, quality=quality)
        paths.append(path)
    return paths


def write_label_map(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write an ``(H, W)`` uint8 label map (0 background, k object k, 255 void) as a palette PNG."""
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(DAVIS_PALETTE)
    image.save(path)


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """``(H, W)`` uint8 object ids of a palette PNG annotation.

    Raises:
        FileNotFoundError: naming the file.
        ValueError: the PNG is not a palette (mode ``P``) or grey-level image.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: annotation not found")
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a palette PNG of object ids, got mode "
                             f"{image.mode}")
        return np.array(image, dtype=np.uint8)

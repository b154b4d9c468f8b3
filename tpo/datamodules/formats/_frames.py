"""Shared helpers for frame-folder formats: writing JPEG frames, palette PNG label maps, checking a
sequence before it is written and removing it again when writing fails."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence

import numpy as np
from PIL import Image

from tpo.datamodules.samples import TrackSample

__all__ = ["DAVIS_PALETTE", "check_new_folders", "check_track", "frame_size", "read_label_map",
           "remove_folders", "write_frames", "write_label_map"]


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


def read_label_maps(annotations: Sequence[str], size: tuple[int, int], first_frame: str) -> np.ndarray:
    """``(T, H, W)`` uint8 label maps of ``annotations``, each checked to be of the frames' ``size``
    ``(height, width)`` (a ``ValueError`` names the annotation, both sizes and ``first_frame``)."""
    labels = []
    for path in annotations:
        label = read_label_map(path)
        if label.shape != tuple(size):
            raise ValueError(f"{path}: annotation is {label.shape[1]}x{label.shape[0]} but the frames "
                             f"(e.g. {first_frame}) are {size[1]}x{size[0]}; expected masks of the "
                             "frame size")
        labels.append(label)
    return np.stack(labels)


def check_frames_and_labels(
    frames: np.ndarray, labels: np.ndarray, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """``frames (T, H, W, 3)`` uint8 with ``T > 0`` and ``labels (T, H, W)`` as arrays, or a
    ``ValueError`` naming ``where`` (``"sequence bear"``) and the shapes."""
    frames, labels = np.asarray(frames), np.asarray(labels)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0 or frames.dtype != np.uint8:
        raise ValueError(f"{where}: frames must be (T, H, W, 3) uint8 with T > 0, got "
                         f"{frames.dtype} of shape {frames.shape}")
    if labels.shape != frames.shape[:3]:
        raise ValueError(f"{where}: labels of shape {labels.shape} for frames of shape "
                         f"{frames.shape}; expected {frames.shape[:3]}")
    return frames, labels


def frame_size(path: str) -> tuple[int, int]:
    """``(height, width)`` of an image file, reading only its header."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: frame not found") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read this frame ({err}); expected a JPEG") from err


def check_track(name: str, frames: np.ndarray | list[str], boxes_xywh: np.ndarray,
                visible: np.ndarray, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """The boxes (0 where hidden, rounded as they will be written) and flags of a sequence to
    write, after checking them as the reader will; raises ``ValueError`` naming the sequence."""
    n = len(frames)
    if n == 0:
        raise ValueError(f"sequence {name}: no frames to write")
    if isinstance(frames[0], (str, os.PathLike)):
        size = frame_size(os.fspath(frames[0]))
    else:
        shape, dtype = np.shape(frames), np.asarray(frames[0]).dtype
        if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
            raise ValueError(f"sequence {name}: frames must be (T, H, W, 3) uint8, got {dtype} "
                             f"of shape {shape}")
        size = shape[1:3]
    boxes = np.asarray(boxes_xywh, dtype=np.float64)
    visible = np.asarray(visible)
    if boxes.shape != (n, 4) or visible.shape != (n,):
        raise ValueError(f"sequence {name}: {n} frames but boxes of shape {boxes.shape} and "
                         f"visible of shape {visible.shape}; expected ({n}, 4) and ({n},)")
    visible = visible.astype(bool)
    boxes = np.round(np.where(visible[:, None], boxes, 0), decimals)
    TrackSample(name=name, frames=[""] * n, boxes_xywh=boxes, visible=visible,
                image_size=tuple(size)).validate()
    return boxes, visible


def check_new_folders(name: str, folders: Sequence[str | os.PathLike]) -> None:
    """Raise ``ValueError`` naming ``name`` when one of ``folders`` already holds files (a
    writer would mix its files with those already there)."""
    for folder in folders:
        if os.path.isdir(folder) and os.listdir(folder):
            raise ValueError(f"sequence {name}: {os.fspath(folder)} already exists; expected a "
                             f"new sequence (remove the folder to write it again)")
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ValueError(f"sequence {name}: {os.fspath(folder)} exists and is not a folder")


def remove_folders(folders: Sequence[str | os.PathLike],
                   *parents: str | os.PathLike) -> None:
    """Remove ``folders`` (a writer's own, new ones) and then each of ``parents`` left empty."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    for parent in parents:
        with contextlib.suppress(OSError):
            os.rmdir(parent)  # only when empty

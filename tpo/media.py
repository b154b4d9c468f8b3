"""Media for inference: a video or image (path, PIL image or uint8 array) -> collator item fields.

Videos are read as the validation datasets read them::

    video path          --VideoReader.sample(num_frames, sampling)--> video (T, H, W, 3) uint8
    (T, H, W, 3) array  --sample_indices(num_frames, sampling)------> video, timestamps index / fps
    image path / PIL / (H, W, 3) array -----------------------------> image (H, W, 3) uint8

each with ``meta``: ``duration`` s (videos), ``frame_size`` ``(H, W)`` px and ``timestamps``
``(T,)`` s (``(1,)`` zero for an image). :func:`question_item` adds a question (and the first-frame
box of a tracking question) to make the collator item a :class:`~tpo.Predictor` answers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from tpo.datamodules.video import IMAGE_EXTENSIONS, VideoReader, sample_indices

__all__ = ["Media", "MediaReader", "as_uint8_array", "box_to_normalised", "image_item", "question_item"]

Media = Any
"""A path, a PIL image, an ``(H, W, 3)`` or ``(T, H, W, 3)`` uint8 array or tensor."""

SAMPLING_MODES = ("uniform", "middle")


@dataclass(frozen=True)
class MediaReader:
    """Reads one medium into collator item fields.

    Args:
        num_frames: frames read from a video (path or array), sampled with ``sampling``.
        sampling: ``"uniform"`` (as the validation datasets) or ``"middle"``.
        fps: frame rate assumed for videos given as arrays (their timestamps are ``index / fps``).
        backend: :class:`~tpo.datamodules.VideoReader` backend for video files.
    """

    num_frames: int = 8
    sampling: str = "uniform"
    fps: float = 1.0
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling: expected 'uniform' or 'middle', got {self.sampling!r}")
        if self.num_frames < 1 or self.fps <= 0:
            raise ValueError(f"num_frames, fps: expected positive values, got {self.num_frames}, {self.fps}")

    def __call__(self, media: Media, index: int = 0) -> dict:
        """``{"video": (T, H, W, 3)}`` or ``{"image": (H, W, 3)}`` uint8, with ``meta``.

        Raises:
            FileNotFoundError: a path that does not exist (named, with the sample ``index``).
            ValueError: an undecodable file (named), an array that is not uint8 RGB.
        """
        if isinstance(media, (str, os.PathLike)):
            path = os.fspath(media)
            if not os.path.exists(path):
                raise FileNotFoundError(f"media of sample {index}: {path} not found")
            reader = VideoReader(path, backend=self.backend)
            if path.lower().endswith(IMAGE_EXTENSIONS):
                return image_item(reader.get_frames([0]).frames[0])
            clip = reader.sample(self.num_frames, mode=self.sampling)
            return {"video": clip.frames,
                    "meta": {"duration": clip.duration, "frame_size": clip.frames.shape[1:3],
                             "timestamps": clip.timestamps}}
        if hasattr(media, "convert") and hasattr(media, "size"):  # PIL image
            return image_item(np.asarray(media.convert("RGB")))
        array = as_uint8_array(media)
        if array.ndim == 3:
            return image_item(array)
        indices = sample_indices(len(array), self.num_frames, self.sampling)
        return {"video": np.ascontiguousarray(array[indices]),
                "meta": {"duration": len(array) / self.fps, "frame_size": array.shape[1:3],
                         "timestamps": indices / self.fps}}


def image_item(image: Any) -> dict:
    """``{"image": (H, W, 3) uint8, "meta": {frame_size, timestamps (1,) zero}}``."""
    image = as_uint8_array(image)
    return {"image": image, "meta": {"frame_size": image.shape[:2], "timestamps": np.zeros(1)}}


def as_uint8_array(media: Any) -> np.ndarray:
    """An ``(H, W, 3)`` / ``(T, H, W, 3)`` uint8 RGB array of an array or tensor, else a ``ValueError``."""
    if isinstance(media, Tensor):
        media = media.detach().cpu().numpy()
    array = np.asarray(media)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(
            f"media: expected an (H, W, 3) image or (T, H, W, 3) frames of uint8 RGB, "
            f"got shape {array.shape} dtype {array.dtype}"
        )
    return array


def box_to_normalised(box: Sequence[float], height: int, width: int, index: int) -> np.ndarray:
    """``[x1, y1, x2, y2]`` pixels of a ``height x width`` frame -> ``(1, 4)`` normalised
    ``(cx, cy, w, h)``; a non-finite or empty box, or one outside the frame, is a ``ValueError``."""
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"box of sample {index}: expected [x1, y1, x2, y2] pixels, got {box!r}")
    x1, y1, x2, y2 = values
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError(
            f"box of sample {index}: {values.tolist()} is not a non-empty xyxy box inside the "
            f"first frame ({width} x {height} px)"
        )
    return np.array([[(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]],
                    dtype=np.float32)


def question_item(fields: dict, question: str, *, box_tokens: Sequence[str],
                  box: Sequence[float] | None = None, index: int = 0, query: str | None = None) -> dict:
    """The collator item of one question (no answer).

    Args:
        fields: the medium's fields (:class:`MediaReader`).
        question: the instruction.
        box_tokens: the input-box tokens (``<track_box>``) a question may carry.
        box: ``[x1, y1, x2, y2]`` pixels of the target in the first frame, for the question's one
            input-box token (``prompt_boxes (1, 4)`` normalised ``cxcywh`` in the item).
        index: the sample, for messages.
        query: the expression the heads read with ``query_words`` (default the question).
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question of sample {index}: expected a non-empty string, got {question!r}")
    item = {"task": "predict", "id": index, "turns": [(question, "")], "target": None,
            "query": question if query is None else query, **fields}
    count = sum(question.count(token) for token in box_tokens)
    token = ", ".join(box_tokens)
    if count and box is None:
        raise ValueError(
            f"question of sample {index}: it has the input-box token {token} but no box was given; "
            "pass box=[x1, y1, x2, y2] (pixels, the target in the first frame)"
        )
    if box is not None and count != 1:
        raise ValueError(
            f"question of sample {index}: box= was given, so the question needs exactly one "
            f"{token} token where the box goes (e.g. 'Track the red circle given at {token} "
            f"through the video.'), found {count}"
        )
    if box is not None:
        height, width = item["meta"]["frame_size"]
        item["prompt_boxes"] = box_to_normalised(box, int(height), int(width), index)
    return item

"""Per-task datasets: annotation records in, task items (frames, turns, targets) out.

An item is a dict: ``task``, ``id``, ``video (T, H, W, 3)`` uint8 or ``image (H, W, 3)`` uint8,
``turns`` (``[(instruction, answer), ...]``), ``prompt_boxes (k, 4)`` normalised cxcywh for the
``<track_box>`` tokens, ``target`` (heads' internal units, see :mod:`tpo.datamodules.collate`),
``meta`` and ``skipped``. Decoders are opened inside ``__getitem__``, so inside the DataLoader
worker that loads the item.

``cache=True`` keeps every decoded video / frame folder (and mask stack) in memory, per process,
after its first use: for small datasets read for many epochs, such as the synthetic one.

``on_error="skip"``: a sample whose media or annotation fails to load (``OSError``,
``ValueError``, which names the file or sample) is logged and replaced by the next one; the
messages travel in ``item["skipped"]`` so the data module can count them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tpo.datamodules.prompts import make_prompt
from tpo.datamodules.samples import (
    ConversationSample,
    MaskSample,
    MomentSample,
    RefSample,
    TrackSample,
)
from tpo.datamodules.video import VideoReader, sample_indices
from tpo.ops.spans import span_se_to_cxw

__all__ = ["ConversationDataset", "MaskDataset", "MomentDataset", "RefDataset", "TaskDataset",
           "TrackDataset", "resize_frames", "xywh_to_cxcywh_normalised"]

log = logging.getLogger(__name__)


def frame_names(frames: Sequence[str]) -> list[str]:
    """The names of a sequence's frame files without folder and extension (``00000`` for
    ``.../00000.jpg``), as benchmark submissions name their per-frame outputs."""
    return [os.path.splitext(os.path.basename(str(f)))[0] for f in frames]


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None, *, nearest: bool = False
                  ) -> np.ndarray:
    """Resize ``(T, H, W, C)`` uint8 frames (antialiased bilinear, as PIL's) or ``(T, H, W)``
    masks / label maps (nearest, pixel centres as PIL) to ``size = (h, w)``; unchanged when
    ``size`` is ``None`` or already met."""
    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    if frames.ndim == 3:
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.uint8))[:, None]
        out = F.interpolate(x, size=tuple(size), mode="nearest-exact")[:, 0].numpy()
        return out.astype(bool) if frames.dtype == bool else out
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if nearest:
        out = F.interpolate(x, size=tuple(size), mode="nearest-exact")
    else:
        out = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True,
                            align_corners=False)
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def xywh_to_cxcywh_normalised(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(..., 4)`` absolute ``x, y, w, h`` pixels -> normalised ``cx, cy, w, h``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    scale = np.array([width, height, width, height], dtype=np.float64)
    return np.concatenate([boxes[..., :2] + boxes[..., 2:] / 2, boxes[..., 2:]], -1) / scale


class TaskDataset(Dataset):
    """Base class: ``samples`` in, items out, with seeded randomness and error handling.

    ``dataset[i]`` uses a seed derived from ``(seed, i)``; ``dataset[(i, draw_seed)]`` uses the
    given one (the multi-task sampler passes a fresh seed per draw and epoch).
    """

    task: str = ""

    def __init__(self, samples: Sequence, *, on_error: str = "raise", seed: int = 0,
                 textual: bool = False, echo_query: bool = False, cache: bool = False) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
        if not len(samples):
            raise ValueError(f"{type(self).__name__}: no samples")
        self.samples = list(samples)
        self.on_error = on_error
        self.seed = seed
        self.textual = textual
        self.echo_query = echo_query
        self.cache = cache
        self._readers: dict = {}
        self._masks: dict = {}

    def reader(self, source: str | Sequence[str], **kwargs) -> VideoReader:
        """A :class:`VideoReader` of ``source``; with ``cache``, one held in memory."""
        if not self.cache:
            return VideoReader(source, **kwargs)
        key = source if isinstance(source, str) else tuple(source)
        if key not in self._readers:
            self._readers[key] = VideoReader(source, **kwargs).in_memory()
        return self._readers[key]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, draw_seed = key if isinstance(key, tuple) else (key, None)
        skipped: list[str] = []
        for attempt in range(len(self)):
            i = (int(index) + attempt) % len(self)
            seed = [self.seed, i] if draw_seed is None else [self.seed, i, int(draw_seed)]
            try:
                item = self.load(i, np.random.default_rng(seed))
            except (OSError, ValueError) as err:
                if self.on_error == "raise":
                    raise
                message = f"{type(self).__name__}[{i}]: {err}"
                log.warning("skipping sample %s", message)
                skipped.append(message)
                continue
            item["skipped"] = skipped
            return item
        raise RuntimeError(f"{type(self).__name__}: no sample could be loaded; first error: "
                           f"{skipped[0]}")


class MomentDataset(TaskDataset):
    """Temporal grounding items from :class:`MomentSample` records.

    Spans are normalised by the annotation's ``duration``; frames are sampled over the whole
    video. ``saliency (T,)`` is the annotated saliency of the clip each frame falls in, or 1
    inside a window and 0 outside when the record has none.

    Args:
        samples: the records.
        video_root: folder of the videos; a record's file is ``<video_root>/<vid><video_ext>``.
        num_frames: frames per item.
        sampling: ``"uniform"``, ``"middle"`` or ``"random"``.
        frame_size: ``(h, w)`` to resize frames to, or ``None``.
        backend: :class:`VideoReader` backend.
    """

    task = "temporal"

    def __init__(self, samples: Sequence[MomentSample], video_root: str | os.PathLike, *,
                 num_frames: int = 16, sampling: str = "uniform",
                 frame_size: tuple[int, int] | None = None, backend: str = "auto",
                 video_ext: str = ".mp4", **kwargs) -> None:
        super().__init__(samples, **kwargs)
        self.video_root, self.video_ext = os.fspath(video_root), video_ext
        self.num_frames, self.sampling = num_frames, sampling
        self.frame_size, self.backend = frame_size, backend

    def video_path(self, sample: MomentSample) -> str:
        name = sample.vid if os.path.splitext(sample.vid)[1] else sample.vid + self.video_ext
        return os.path.join(self.video_root, name)

    def load(self, index: int, rng: np.random.Generator) -> dict:
        s = self.samples[index].validate()
        clip = self.reader(self.video_path(s), backend=self.backend).sample(
            self.num_frames, mode=self.sampling, rng=rng)
        windows = torch.as_tensor(s.windows / s.duration, dtype=torch.float32)
        if s.saliency is not None:
            clip_index = np.minimum((clip.timestamps / s.clip_len).astype(np.int64),
                                    len(s.saliency) - 1)
            saliency = s.saliency[clip_index]
        else:
            t = clip.timestamps[:, None]
            saliency = ((t >= s.windows[:, 0]) & (t < s.windows[:, 1])).any(1)
        prompt = make_prompt(self.task, s.query, seed=rng, textual=self.textual, echo_query=self.echo_query,
                             windows_s=s.windows)
        return {"task": self.task, "id": s.qid,
                "video": resize_frames(clip.frames, self.frame_size),
                "turns": [(prompt.instruction, prompt.answer)], "query": prompt.query,
                "target": {"spans": span_se_to_cxw(windows).numpy(),
                           "saliency": np.asarray(saliency, dtype=np.float32)},
                "meta": {"vid": s.vid, "query": s.query, "duration": s.duration,
                         "frame_size": clip.frames.shape[1:3], "timestamps": clip.timestamps}}


class RefDataset(TaskDataset):
    """Referring-expression items (one image, one box) from :class:`RefSample` records.

    The box is checked against the decoded image (half a pixel of overshoot tolerated) and then
    clipped to it before normalising."""

    task = "box"

    def __init__(self, samples: Sequence[RefSample], *,
                 frame_size: tuple[int, int] | None = None, **kwargs) -> None:
        super().__init__(samples, **kwargs)
        self.frame_size = frame_size

    def load(self, index: int, rng: np.random.Generator) -> dict:
        s = self.samples[index]
        image = self.reader(s.image).get_frames([0]).frames[0]
        h, w = image.shape[:2]
        RefSample(s.image, s.expression, s.box_xyxy, (h, w), s.ref_id).validate()
        x1, y1, x2, y2 = np.clip(s.box_xyxy, 0, [w, h, w, h])  # within the half-pixel tolerance
        box = xywh_to_cxcywh_normalised([x1, y1, x2 - x1, y2 - y1], h, w)
        prompt = make_prompt(self.task, s.expression, seed=rng, textual=self.textual,
                             echo_query=self.echo_query,
                             box=np.array([x1 / w, y1 / h, x2 / w, y2 / h]))
        image = resize_frames(image[None], self.frame_size)[0]
        return {"task": self.task, "id": s.ref_id, "image": image,
                "turns": [(prompt.instruction, prompt.answer)], "query": prompt.query,
                "target": {"boxes": box.astype(np.float32)},
                "meta": {"image": s.image, "frame_size": (h, w)}}


class TrackDataset(TaskDataset):
    """Tracking items from :class:`TrackSample` records: the first sampled frame is always the
    sequence's first frame, whose box goes in the prompt (``<track_box>``).

    Boxes of frames where the target is not visible are zeros (the ``visible`` flag says so).
    Visible boxes are checked against the frame (half a pixel of overshoot is tolerated, as
    :meth:`TrackSample.validate` does) and the normalised boxes are then clipped to [0, 1].
    """

    task = "track"

    def __init__(self, samples: Sequence[TrackSample], *, num_frames: int = 8,
                 sampling: str = "uniform", frame_size: tuple[int, int] | None = None,
                 **kwargs) -> None:
        super().__init__(samples, **kwargs)
        self.num_frames, self.sampling, self.frame_size = num_frames, sampling, frame_size

    def load(self, index: int, rng: np.random.Generator) -> dict:
        s = self.samples[index]
        indices = sample_indices(len(s.frames), self.num_frames, self.sampling, rng)
        indices[0] = 0
        clip = self.reader(s.frames, fps=s.fps).get_frames(indices)
        h, w = clip.frames.shape[1:3]
        TrackSample(s.name, s.frames, s.boxes_xywh, s.visible, s.fps, (h, w)).validate()
        visible = s.visible[indices]
        boxes = xywh_to_cxcywh_normalised(s.boxes_xywh[indices], h, w)
        boxes = np.where(visible[:, None], np.clip(boxes, 0, 1), 0).astype(np.float32)
        corners = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
        prompt = make_prompt(self.task, s.description, seed=rng, textual=self.textual,
                             echo_query=self.echo_query,
                             boxes=corners)  # textual tracks are [x1, y1, x2, y2] per frame
        return {"task": self.task, "id": s.name,
                "video": resize_frames(clip.frames, self.frame_size),
                "turns": [(prompt.instruction, prompt.answer)], "query": prompt.query,
                "prompt_boxes": boxes[:1],
                "target": {"boxes": boxes, "visible": visible},
                "meta": {"frame_size": (h, w), "timestamps": clip.timestamps,
                         "frame_indices": indices, "frame_names": frame_names(s.frames)}}


class MaskDataset(TaskDataset):
    """Referring segmentation items from :class:`MaskSample` records; the target is the union of
    the sample's objects (MeViS expressions may name several), empty where they are absent."""

    task = "mask"

    def __init__(self, samples: Sequence[MaskSample], *, num_frames: int = 8,
                 sampling: str = "uniform", frame_size: tuple[int, int] | None = None,
                 **kwargs) -> None:
        super().__init__(samples, **kwargs)
        self.num_frames, self.sampling, self.frame_size = num_frames, sampling, frame_size

    def load(self, index: int, rng: np.random.Generator) -> dict:
        s = self.samples[index]
        if index in self._masks:
            masks = self._masks[index]
        else:
            masks = s.load_masks().any(0)
            if self.cache:
                self._masks[index] = masks
        indices = sample_indices(len(s.frames), self.num_frames, self.sampling, rng)
        clip = self.reader(s.frames, fps=s.fps).get_frames(indices)
        if masks.shape[1:] != clip.frames.shape[1:3]:
            raise ValueError(f"sample {s.name}: masks are {masks.shape[1:]} but frames are "
                             f"{clip.frames.shape[1:3]}")
        prompt = make_prompt(self.task, s.expression, seed=rng, echo_query=self.echo_query)
        return {"task": self.task, "id": s.name,
                "video": resize_frames(clip.frames, self.frame_size),
                "turns": [(prompt.instruction, prompt.answer)], "query": prompt.query,
                "target": {"masks": resize_frames(masks[indices], self.frame_size)},
                "meta": {"frame_size": clip.frames.shape[1:3], "timestamps": clip.timestamps,
                         "frame_indices": indices, "frame_names": frame_names(s.frames)}}


class ConversationDataset(TaskDataset):
    """LLaVA conversation items (language loss only): the media's frames and the turns, with
    ``<video>`` / ``<image>`` markers left for the collator."""

    task = "conversation"

    def __init__(self, samples: Sequence[ConversationSample], *, num_frames: int = 8,
                 sampling: str = "uniform", frame_size: tuple[int, int] | None = None,
                 backend: str = "auto", **kwargs) -> None:
        super().__init__(samples, **kwargs)
        self.num_frames, self.sampling = num_frames, sampling
        self.frame_size, self.backend = frame_size, backend

    def load(self, index: int, rng: np.random.Generator) -> dict:
        s = self.samples[index]
        turns = [(s.conversations[k]["value"], s.conversations[k + 1]["value"])
                 for k in range(0, len(s.conversations), 2)]
        item = {"task": self.task, "id": s.id, "turns": turns, "target": None, "meta": {}}
        if s.kind == "video":
            clip = self.reader(s.media, backend=self.backend).sample(
                self.num_frames, mode=self.sampling, rng=rng)
            item["video"] = resize_frames(clip.frames, self.frame_size)
            item["meta"] = {"duration": clip.duration, "frame_size": clip.frames.shape[1:3]}
        elif s.kind == "image":
            image = self.reader(s.media).get_frames([0]).frames
            item["image"] = resize_frames(image, self.frame_size)[0]
            item["meta"] = {"frame_size": image.shape[1:3]}
        return item

"""Annotation records the format readers return, in boundary units (seconds, pixels).

Each record has ``validate()`` that raises a ``ValueError`` naming the sample when an annotation
cannot be right (a span beyond the duration, a box outside the frame, an object that is empty in
every frame). Readers call it; nothing is clamped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ConversationSample", "MaskSample", "MomentSample", "RefSample", "TrackSample"]

_EPS = 1e-6


@dataclass
class MomentSample:
    """A query grounded to moments of a video (Charades-STA, QVHighlights, ActivityNet).

    Attributes:
        vid: video id (file stem) or path relative to the video root.
        query: the natural-language query.
        windows: ``(n, 2)`` float ``[start_s, end_s]`` moments, ``0 <= start < end <= duration``.
        duration: video duration in seconds.
        qid: query id (a string or an int, as the source has it).
        saliency: ``(num_clips,)`` float per-clip saliency over the whole video, or ``None``.
        clip_len: seconds per saliency clip (QVHighlights: 2).
    """

    vid: str
    query: str
    windows: np.ndarray
    duration: float
    qid: str | int | None = None
    saliency: np.ndarray | None = None
    clip_len: float = 2.0

    def __post_init__(self) -> None:
        self.windows = np.asarray(self.windows, dtype=np.float64).reshape(-1, 2)
        if self.saliency is not None:
            self.saliency = np.asarray(self.saliency, dtype=np.float32).reshape(-1)

    @property
    def name(self) -> str:
        return f"{self.vid} (qid {self.qid})"

    def validate(self) -> MomentSample:
        if not (np.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"sample {self.name}: duration must be positive and finite, got "
                             f"{self.duration}")
        w = self.windows
        if not np.isfinite(w).all():
            raise ValueError(f"sample {self.name}: window "
                             f"{w[~np.isfinite(w).all(1)][0].tolist()} s is not finite; expected "
                             f"[start, end] seconds inside [0, duration={self.duration}]")
        if self.saliency is not None and not np.isfinite(self.saliency).all():
            raise ValueError(f"sample {self.name}: saliency has non-finite scores; expected "
                             f"finite per-clip scores")
        bad = (w[:, 0] < -_EPS) | (w[:, 1] > self.duration + 1e-3) | (w[:, 1] <= w[:, 0])
        if bad.any():
            raise ValueError(f"sample {self.name}: window {w[bad][0].tolist()} s is not inside "
                             f"[0, duration={self.duration}] with start < end")
        return self


@dataclass
class RefSample:
    """A referring expression on an image (RefCOCO/+/g, flat grounding JSON).

    Attributes:
        image: image path.
        expression: the referring expression.
        box_xyxy: ``(4,)`` float absolute ``x1, y1, x2, y2`` pixels.
        image_size: ``(height, width)`` in pixels when the source states it, else ``None``.
        ref_id: identifier in the source.
    """

    image: str
    expression: str
    box_xyxy: np.ndarray
    image_size: tuple[int, int] | None = None
    ref_id: str | int | None = None

    def __post_init__(self) -> None:
        self.box_xyxy = np.asarray(self.box_xyxy, dtype=np.float64).reshape(4)

    @property
    def name(self) -> str:
        return f"{self.image} (ref {self.ref_id})"

    def validate(self) -> RefSample:
        x1, y1, x2, y2 = self.box_xyxy
        if not np.isfinite(self.box_xyxy).all():
            raise ValueError(f"sample {self.name}: box {self.box_xyxy.tolist()} is not finite; "
                             f"expected x1, y1, x2, y2 pixels")
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"sample {self.name}: box {self.box_xyxy.tolist()} has no area")
        if self.image_size is not None:
            h, w = self.image_size
            if x1 < -0.5 or y1 < -0.5 or x2 > w + 0.5 or y2 > h + 0.5:
                raise ValueError(f"sample {self.name}: box {self.box_xyxy.tolist()} lies outside "
                                 f"the {w}x{h} image")
        return self


@dataclass
class TrackSample:
    """A single-object tracking sequence (LaSOT, GOT-10k).

    Attributes:
        name: sequence name.
        frames: frame file paths in order.
        boxes_xywh: ``(N, 4)`` float absolute ``x, y, w, h`` pixels per frame.
        visible: ``(N,)`` bool, whether the target is visible in each frame.
        fps: frame rate of the sequence.
        image_size: ``(height, width)`` when known (checked against the boxes).
        category: object class, if the source has one.
        description: a sentence describing the target (LaSOT ``nlp.txt``), if any.
    """

    name: str
    frames: list[str]
    boxes_xywh: np.ndarray
    visible: np.ndarray
    fps: float = 30.0
    image_size: tuple[int, int] | None = None
    category: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        self.boxes_xywh = np.asarray(self.boxes_xywh, dtype=np.float64).reshape(-1, 4)
        self.visible = np.asarray(self.visible, dtype=bool).reshape(-1)

    def validate(self) -> TrackSample:
        n = len(self.frames)
        if self.boxes_xywh.shape[0] != n or self.visible.shape[0] != n:
            raise ValueError(f"sample {self.name}: {n} frames but {self.boxes_xywh.shape[0]} boxes "
                             f"and {self.visible.shape[0]} visibility flags")
        if not self.visible.any():
            raise ValueError(f"sample {self.name}: the target is not visible in any frame")
        if not self.visible[0]:
            raise ValueError(f"sample {self.name}: the target must be visible in the first frame "
                             "(its box initialises the tracker)")
        box = self.boxes_xywh[self.visible]
        if not np.isfinite(box).all():
            first = int(np.flatnonzero(self.visible)[~np.isfinite(box).all(1)][0])
            raise ValueError(f"sample {self.name}: visible frame {first} has a non-finite box "
                             f"{self.boxes_xywh[first].tolist()}; expected x, y, w, h pixels")
        if (box[:, 2:] <= 0).any():
            first = int(np.flatnonzero(self.visible)[(box[:, 2:] <= 0).any(1)][0])
            raise ValueError(f"sample {self.name}: visible frame {first} has an empty box "
                             f"{self.boxes_xywh[first].tolist()}")
        if self.image_size is not None:
            h, w = self.image_size
            out = (box[:, 0] < -0.5) | (box[:, 1] < -0.5) | (box[:, 0] + box[:, 2] > w + 0.5) | (
                box[:, 1] + box[:, 3] > h + 0.5)
            if out.any():
                first = int(np.flatnonzero(self.visible)[out][0])
                raise ValueError(f"sample {self.name}: frame {first} box "
                                 f"{self.boxes_xywh[first].tolist()} (xywh) lies outside the "
                                 f"{w}x{h} frame")
        return self


@dataclass
class MaskSample:
    """Objects segmented over a frame sequence (DAVIS-2017, Ref-YouTube-VOS, MeViS).

    Attributes:
        name: sample name (sequence, plus expression id where there is one).
        frames: frame file paths in order.
        masks: ``(O, T, H, W)`` bool, one mask per object and frame (empty where the object is
            absent), or a zero-argument callable returning it (readers load lazily).
        expression: referring expression, or ``None`` (DAVIS semi-supervised).
        object_ids: ``(O,)`` the objects' ids in the source.
        fps: frame rate of the frame sequence.
    """

    name: str
    frames: list[str]
    masks: np.ndarray | Callable[[], np.ndarray]
    expression: str | None = None
    object_ids: list = field(default_factory=list)
    fps: float = 24.0

    def load_masks(self) -> np.ndarray:
        """The ``(O, T, H, W)`` bool masks, loaded if lazy, then validated."""
        masks = self.masks() if callable(self.masks) else self.masks
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 4 or masks.shape[1] != len(self.frames):
            raise ValueError(f"sample {self.name}: masks must be (objects, {len(self.frames)} "
                             f"frames, H, W), got shape {masks.shape}")
        empty = ~masks.any(axis=(1, 2, 3))
        if empty.any():
            obj = self.object_ids[int(np.flatnonzero(empty)[0])] if self.object_ids else int(
                np.flatnonzero(empty)[0])
            raise ValueError(f"sample {self.name}: object {obj} has an empty mask in every frame")
        return masks

    def validate(self) -> MaskSample:
        if not self.frames:
            raise ValueError(f"sample {self.name}: no frames")
        self.masks = self.load_masks()
        return self


@dataclass
class ConversationSample:
    """A LLaVA-style conversation about an image or a video.

    Attributes:
        media: image or video path (relative to the media root), or ``None`` for text only.
        conversations: ``[{"from": "human" | "gpt", "value": str}, ...]``; the first human turn
            holds the ``<image>`` / ``<video>`` marker when there is media.
        kind: ``"image"``, ``"video"`` or ``None``.
        id: identifier in the source.
    """

    media: str | None
    conversations: list[dict]
    kind: str | None = None
    id: str | int | None = None

    def validate(self) -> ConversationSample:
        if not isinstance(self.conversations, list):
            raise ValueError(f"sample {self.id}: conversations must be a list of turns "
                             f"{{'from', 'value'}}, got {type(self.conversations).__name__}")
        if not self.conversations:
            raise ValueError(f"sample {self.id}: empty conversation")
        for i, turn in enumerate(self.conversations):
            expected = "human" if i % 2 == 0 else "gpt"
            if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(
                    turn.get("value"), str):
                raise ValueError(f"sample {self.id}: turn {i} must be {{'from': '{expected}', "
                                 f"'value': str}}, got {turn!r}")
        if len(self.conversations) % 2:
            raise ValueError(f"sample {self.id}: the conversation ends with a human turn")
        return self

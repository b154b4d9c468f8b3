"""Reading frames from videos, images and frame folders, with timestamps in seconds.

:class:`VideoReader` opens nothing until a frame or a property is asked for, and re-opens itself
in every process that uses it (a pickled reader carries only its path), so decord's readers are
created inside each DataLoader worker and never shared with the parent.

Sampling follows the public recipes:

- ``mode="uniform"``: ``np.linspace(0, n - 1, k)`` rounded down (LLaVA-style);
- ``mode="middle"``: the middle frame of ``k`` equal segments (VideoChat2 ``"middle"``);
- ``mode="random"``: one random frame per segment (VideoChat2 ``"rand"``, for training);
- by ``fps``: one frame every ``1 / fps`` seconds, the last frame shown at that time;
- any of these restricted to a time range ``[start, end)`` in seconds.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "Clip",
    "VideoDecodeError",
    "VideoReader",
    "sample_indices",
    "sample_indices_by_fps",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SAMPLING_MODES = ("uniform", "middle", "random")
_TOL = 1e-5  # seconds: timestamps closer than this count as equal (decord reports float32)
# FFmpeg renders text files (``.txt``, ``.nfo``, ...) as "ANSI art" videos; those are no videos.
_TEXT_FORMATS = ("tty",)
_TEXT_CODECS = ("ansi", "bintext", "xbin", "idf")


class VideoDecodeError(ValueError):
    """A video (or image) exists but cannot be decoded; the message names the file."""


@dataclass
class Clip:
    """Frames sampled from one source.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        timestamps: ``(T,)`` float64 presentation time of each frame, seconds from the first frame.
        indices: ``(T,)`` int64 frame indices in the source.
        duration: duration of the whole source in seconds.
        path: the source.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    duration: float
    path: str


def sample_indices(num_total: int, num_frames: int, mode: str = "uniform",
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """``(num_frames,)`` int64 indices into ``num_total`` frames, sorted (repeats when too few).

    Args:
        num_total: number of candidate frames (> 0).
        num_frames: how many to take (> 0).
        mode: ``"uniform"``, ``"middle"`` or ``"random"`` (see the module docstring).
        rng: generator for ``"random"``; a fresh unseeded one when ``None``.
    """
    if num_total <= 0:
        raise ValueError(f"num_total: expected at least one frame to sample from, got {num_total}")
    if num_frames <= 0:
        raise ValueError(f"num_frames: expected a positive count, got {num_frames}")
    if mode == "uniform":
        return np.linspace(0, num_total - 1, num_frames).astype(np.int64)
    if mode not in SAMPLING_MODES:
        raise ValueError(f"mode: expected one of {SAMPLING_MODES}, got {mode!r}")
    edges = np.linspace(0, num_total, num_frames + 1).astype(np.int64)
    lo, hi = edges[:-1], np.maximum(edges[1:], edges[:-1] + 1)
    if mode == "middle":
        return (lo + hi - 1) // 2
    rng = rng if rng is not None else np.random.default_rng()
    return lo + (rng.random(num_frames) * (hi - lo)).astype(np.int64)


def sample_indices_by_fps(timestamps: np.ndarray, fps: float, start: float | None = None,
                          end: float | None = None) -> np.ndarray:
    """Indices of the frames on screen at ``start, start + 1/fps, ...`` up to ``end`` (excluded).

    Args:
        timestamps: ``(N,)`` increasing presentation times in seconds.
        fps: sampling rate in frames per second (> 0).
        start: first time, default the first frame's.
        end: end time, default the source's last timestamp (included).
    """
    if not _positive_finite(fps):
        raise ValueError(f"fps: expected a positive, finite rate, got {fps!r}")
    for name, value in (("start", start), ("end", end)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite time in seconds, got {value}")
    start = float(timestamps[0]) if start is None else start
    if end is None:
        times = np.arange(start, float(timestamps[-1]) + _TOL, 1.0 / fps)
    else:
        times = np.arange(start, end - _TOL, 1.0 / fps)
    if times.size == 0:
        raise ValueError(f"time range [{start}, {end}) holds no sample at {fps} fps")
    index = np.searchsorted(timestamps, times + _TOL, side="right") - 1
    return np.clip(index, 0, len(timestamps) - 1).astype(np.int64)


def _positive_finite(value) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(value) and value > 0
    except TypeError:
        return False


def _indices_text(indices) -> str:
    values = [int(i) for i in indices]
    return str(values) if len(values) <= 12 else f"[{values[0]}, ..., {values[-1]}] ({len(values)})"


def _text_head(path: str, size: int = 4096) -> str | None:
    """The first characters of ``path`` when it starts as plain text (no video does), else
    ``None``."""
    with open(path, "rb") as f:
        head = f.read(size)
    if not head or b"\x00" in head:
        return None
    for cut in range(4):  # a multi-byte character split at the end of the read
        try:
            text = head[:len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    if all(c.isprintable() or c in "\t\n\r\f" for c in text):
        return text
    return None


class _DecordBackend:
    def __init__(self, path: str, num_threads: int) -> None:
        import decord

        try:
            self.vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
            stamps = self.vr.get_frame_timestamp(np.arange(len(self.vr)))
        except (decord.DECORDError, RuntimeError) as err:
            raise VideoDecodeError(f"{path}: decord cannot read this video, expected a video "
                                   f"file such as an H.264 mp4 ({err})") from err
        if len(self.vr) == 0:
            raise VideoDecodeError(f"{path}: the video has no frames")
        self.path = path
        stamps = np.round(stamps.astype(np.float64), 6)  # float32 from decord: keep microseconds
        self.timestamps = stamps[:, 0] - stamps[0, 0]
        self.duration = float(stamps[-1, 1] - stamps[0, 0])

    def get(self, indices: np.ndarray) -> np.ndarray:
        import decord

        try:
            frames = self.vr.get_batch(list(indices)).asnumpy()
        except (decord.DECORDError, RuntimeError) as err:
            raise VideoDecodeError(f"{self.path}: decord failed on frames "
                                   f"{_indices_text(indices)}, the file may be truncated or not "
                                   f"a video ({err})") from err
        self.vr.seek(0)  # bounds decord's memory growth over many get_batch calls
        return frames


class _PyAVBackend:
    """Frame-accurate access by presentation timestamp; seeks to the key frame before a target."""

    def __init__(self, path: str, num_threads: int) -> None:
        import av

        self.path, self.num_threads = path, num_threads
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise VideoDecodeError(f"{path}: no video stream in this file (expected a "
                                           f"video such as an H.264 mp4)")
                stream = container.streams.video[0]
                codec = stream.codec_context.name
                if container.format.name in _TEXT_FORMATS or codec in _TEXT_CODECS:
                    raise VideoDecodeError(f"{path}: not a video: FFmpeg reads it as text "
                                           f"({container.format.name}/{codec}); expected a "
                                           f"video such as an H.264 mp4")
                declared = int(stream.frames or 0)
                pts, keys, durations = [], [], []
                for packet in container.demux(stream):
                    if packet.pts is None or packet.size == 0:
                        continue
                    pts.append(packet.pts)
                    durations.append(packet.duration or 0)
                    if packet.is_keyframe:
                        keys.append(packet.pts)
                self.time_base = float(stream.time_base)
        except av.FFmpegError as err:
            raise VideoDecodeError(f"{path}: PyAV cannot read this video, expected a video file "
                                   f"such as an H.264 mp4 ({err})") from err
        if not pts:
            raise VideoDecodeError(f"{path}: the video has no frames")
        if declared and len(pts) < declared:
            raise VideoDecodeError(f"{path}: truncated video: the container declares {declared} "
                                   f"frames but only {len(pts)} could be read")
        order = np.argsort(pts, kind="stable")
        self.pts = np.asarray(pts, dtype=np.int64)[order]
        self.keys = sorted(keys) or [int(self.pts[0])]
        last = int(order[-1])
        self.timestamps = (self.pts - self.pts[0]) * self.time_base
        self.duration = float((pts[last] + durations[last] - self.pts[0]) * self.time_base)

    def get(self, indices: np.ndarray) -> np.ndarray:
        import av

        wanted = sorted(set(int(i) for i in indices))
        found: dict[int, np.ndarray] = {}
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = self.num_threads
                frames, position = None, None
                for i in wanted:
                    target = int(self.pts[i])
                    key = self.keys[max(bisect.bisect_right(self.keys, target) - 1, 0)]
                    if frames is None or position is None or position >= target or key > position:
                        container.seek(key, stream=stream, backward=True)
                        frames = container.decode(stream)
                    for frame in frames:
                        if frame.pts is None:
                            continue
                        position = frame.pts
                        if frame.pts >= target:
                            break
                    if position != target:
                        raise VideoDecodeError(f"{self.path}: frame {i} (pts {target}) was not "
                                               f"found while decoding")
                    found[i] = frame.to_ndarray(format="rgb24")
        except av.FFmpegError as err:
            raise VideoDecodeError(f"{self.path}: PyAV failed on frames {_indices_text(wanted)}, "
                                   f"the file may be truncated ({err})") from err
        return np.stack([found[int(i)] for i in indices])


class _ImageBackend:
    """A single image, a folder of frames or a list of frame files, shown at ``fps``."""

    def __init__(self, files: list[str], fps: float) -> None:
        self.files = files
        self.timestamps = np.arange(len(files)) / fps
        self.duration = len(files) / fps

    def get(self, indices: np.ndarray) -> np.ndarray:
        frames = []
        for i in indices:
            path = self.files[int(i)]
            try:
                with Image.open(path) as image:
                    frames.append(np.asarray(image.convert("RGB")))
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: frame file not found") from None
            except OSError as err:
                raise VideoDecodeError(f"{path}: cannot decode this image ({err})") from err
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise VideoDecodeError(f"{self.files[int(indices[0])]}...: frames differ in size "
                                   f"{sorted(shapes)}")
        return np.stack(frames)


class _ArrayBackend:
    """Frames already decoded, held in memory."""

    def __init__(self, frames: np.ndarray, timestamps: np.ndarray, duration: float) -> None:
        self.frames, self.timestamps, self.duration = frames, timestamps, duration

    def get(self, indices: np.ndarray) -> np.ndarray:
        return self.frames[indices]


class VideoReader:
    """Frames and timestamps from a video file, an image, a frame folder or a list of frames.

    Args:
        source: a video file, an image file, a folder of image frames (sorted by name) or a list
            of frame files.
        backend: ``"auto"`` (default: decord, falling back to PyAV when decord is not
            installed or cannot read the file), ``"decord"`` or ``"pyav"`` (that one only).
            Ignored for images.
        fps: the frame rate of an image sequence (frame folders carry none); default 30.
        num_threads: decoder threads (1 suits DataLoader workers).

    Nothing is opened before the first access; the open decoder is dropped when the reader is
    pickled and re-created in a process other than the one that opened it.

    Raises (on first access):
        FileNotFoundError: the source does not exist, or is a folder without image frames
            (named).
        VideoDecodeError: the source exists but cannot be decoded (named): an empty file, a text
            file, random bytes, a truncated video (fewer frames than its container declares), a
            file without a video stream.
    """

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], *,
                 backend: str = "auto", fps: float | None = None, num_threads: int = 1) -> None:
        if backend not in ("decord", "pyav", "auto"):
            raise ValueError(f"backend: expected 'decord', 'pyav' or 'auto', got {backend!r}")
        if isinstance(source, (str, os.PathLike)):
            self.source: str | list[str] = os.fspath(source)
        else:
            self.source = [os.fspath(p) for p in source]
            if not self.source:
                raise ValueError("source: the list of frames is empty")
        if fps is not None and not _positive_finite(fps):
            raise ValueError(f"{self.name}: fps: expected a positive, finite frame rate of the "
                             f"frames, got {fps!r}")
        self.backend = backend
        self.fps_override = fps
        self.num_threads = num_threads
        self._impl = None
        self._pid: int | None = None

    @property
    def name(self) -> str:
        return self.source if isinstance(self.source, str) else os.path.dirname(self.source[0])

    def __repr__(self) -> str:
        return f"VideoReader({self.name!r}, backend={self.backend!r})"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if not isinstance(self._impl, _ArrayBackend):
            state["_impl"], state["_pid"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if isinstance(self._impl, _ArrayBackend):
            self._pid = os.getpid()

    def in_memory(self) -> VideoReader:
        """A reader over every frame of this source, decoded now and kept in memory (for small
        datasets read many times, such as the synthetic one)."""
        impl = self._open()
        clip = self.get_frames(np.arange(len(impl.timestamps)))
        reader = VideoReader(self.source, backend=self.backend, fps=self.fps_override,
                             num_threads=self.num_threads)
        reader._impl = _ArrayBackend(clip.frames, impl.timestamps, impl.duration)
        reader._pid = os.getpid()
        return reader

    @property
    def is_open(self) -> bool:
        """Whether a decoder is open (or the frames are held) in this process."""
        return self._impl is not None and self._pid == os.getpid()

    def close(self) -> None:
        """Drop the decoder (and the frames of an in-memory reader)."""
        self._impl, self._pid = None, None

    def _open(self):
        if self.is_open:
            return self._impl
        self._impl = self._make_backend()
        self._pid = os.getpid()
        return self._impl

    def _make_backend(self):
        fps = self.fps_override or 30.0
        if isinstance(self.source, list):
            return _ImageBackend(self.source, fps)
        path = self.source
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: video/image source not found")
        if os.path.isdir(path):
            files = sorted(str(p) for p in Path(path).iterdir()
                           if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise FileNotFoundError(f"{path}: folder holds no image frames "
                                        f"({', '.join(IMAGE_EXTENSIONS)})")
            return _ImageBackend(files, fps)
        if path.lower().endswith(IMAGE_EXTENSIONS):
            return _ImageBackend([path], fps)
        if os.path.getsize(path) == 0:
            raise VideoDecodeError(f"{path}: the file is empty (0 bytes), expected a video")
        text = _text_head(path)
        if text is not None:
            raise VideoDecodeError(f"{path}: this is a text file (it starts "
                                   f"{text[:40]!r}), expected a video")
        if self.backend == "pyav":
            return _PyAVBackend(path, self.num_threads)
        try:
            return _DecordBackend(path, self.num_threads)
        except (ImportError, VideoDecodeError):
            if self.backend == "decord":
                raise
            return _PyAVBackend(path, self.num_threads)

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self._open().timestamps)

    @property
    def timestamps(self) -> np.ndarray:
        """``(N,)`` float64 presentation time of every frame, seconds from the first frame."""
        return self._open().timestamps

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        return self._open().duration

    @property
    def fps(self) -> float:
        """Average frame rate: frames / duration."""
        return len(self) / self.duration

    # ------------------------------------------------------------------ access
    def get_frames(self, indices: Sequence[int] | np.ndarray) -> Clip:
        """Frames at ``indices`` (any order, repeats allowed) as a :class:`Clip`."""
        impl = self._open()
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(impl.timestamps)
        if indices.size == 0 or indices.min() < 0 or indices.max() >= n:
            raise ValueError(f"{self.name}: frame indices must lie in [0, {n}), got "
                             f"{indices.tolist()}")
        frames = impl.get(indices)
        return Clip(frames, impl.timestamps[indices], indices, impl.duration, self.name)

    def sample(self, num_frames: int | None = None, *, fps: float | None = None,
               mode: str = "uniform", start: float | None = None, end: float | None = None,
               rng: np.random.Generator | None = None) -> Clip:
        """Sample frames by count (``num_frames`` with ``mode``) or by rate (``fps``).

        Args:
            num_frames: number of frames, sampled with ``mode`` among the frames in range (frames
                repeat when the range holds fewer, as LLaVA's ``linspace`` sampling does).
            fps: frames per second instead of a count.
            mode: ``"uniform"``, ``"middle"`` or ``"random"`` (count sampling only).
            start: start of the time range in seconds, ``0 <= start`` and before the clip's end
                (default: the beginning).
            end: end of the time range in seconds, excluded (default: the end). By count, an end
                past the clip's end takes the frames up to the last one; by rate, no sampling time
                may lie at or past the clip's end (the last frame would stand in for times the
                clip does not have).
            rng: random generator for ``mode="random"``.

        Raises:
            ValueError: naming the source: both or neither of ``num_frames`` and ``fps``; a count
                or rate that is not positive (and finite); a non-finite or negative time; an
                empty or inverted range (``end <= start``); a range with no frame of the clip; by
                rate, sampling times past the clip's end.
        """
        if (num_frames is None) == (fps is None):
            raise ValueError(f"{self.name}: sample: give exactly one of num_frames and fps")
        if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(
                num_frames, (int, np.integer)) or num_frames <= 0):
            raise ValueError(f"{self.name}: num_frames: expected a positive integer count, got "
                             f"{num_frames!r}")
        if fps is not None and not _positive_finite(fps):
            raise ValueError(f"{self.name}: fps: expected a positive, finite sampling rate, got "
                             f"{fps!r}")
        for key, value in (("start", start), ("end", end)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{self.name}: {key}: expected a finite time in seconds, got "
                                 f"{value}")
        if start is not None and start < 0:
            raise ValueError(f"{self.name}: start: expected a time >= 0 s, got {start}")
        if end is not None and end <= (0.0 if start is None else start):
            raise ValueError(f"{self.name}: time range [{start}, {end}) is empty or inverted "
                             f"(expected start < end)")
        stamps = self.timestamps
        duration = self.duration
        if start is not None and start >= duration - _TOL:
            raise ValueError(f"{self.name}: no frame in [{start}, {end}) s: the range starts "
                             f"after the clip, which spans {duration:.3f} s")
        if fps is not None:
            first = float(stamps[0]) if start is None else start
            indices = sample_indices_by_fps(stamps, fps, start, end)
            last = first + (len(indices) - 1) / fps
            if last > float(stamps[-1]) + _TOL and last >= duration - _TOL:
                raise ValueError(f"{self.name}: at {fps} fps the range [{start}, {end}) s asks "
                                 f"for times up to {last:.3f} s, past the clip's end at "
                                 f"{duration:.3f} s (expected end <= duration)")
            return self.get_frames(indices)
        lo = 0 if start is None else int(np.searchsorted(stamps, start - _TOL, side="left"))
        hi = len(stamps) if end is None else int(np.searchsorted(stamps, end - _TOL, side="left"))
        if hi <= lo:
            raise ValueError(f"{self.name}: no frame in [{start}, {end}) s "
                             f"(the source spans {duration:.3f} s)")
        return self.get_frames(lo + sample_indices(hi - lo, num_frames, mode, rng))

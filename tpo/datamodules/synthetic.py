"""A synthetic video dataset of moving coloured shapes, written in the public formats.

Each clip shows two objects (a colour and a shape each, never both equal) on a dark background.
Each object appears at some frame, moves in a straight line (left, right, up or down) and
disappears at a later frame. Everything a query asks is visible in the pixels: the colour and
shape name the object, the motion and the appearance time are what the answers state.

Written per split (``train``/``val``), all under ``root``:

- ``videos/<vid>.mp4``: real H.264 (PyAV's libx264), ``size`` x ``size``, ``fps``;
- ``qvhighlights_<split>.jsonl``: "when is the red circle visible?" moments + saliency per frame
  (``clip_len = 1 / fps``; scores 1-4 from the visible fraction of the object);
- ``refs_<split>.json``: flat grounding JSON on ``images/<vid>.jpg`` (one frame per clip);
- ``got10k/<split>/<vid>`` (or ``lasot/``): the first object tracked from its first frame;
- ``refytvos``: DAVIS-style palette PNG masks with one expression per object;
- ``llava_<split>.json``: questions and one-word answers about colour, shape and motion;
- ``synthetic.json``: the manifest (parameters, files, and the ground truth of every clip).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import numpy as np

from tpo.datamodules.formats import got10k, lasot, llava, qvhighlights, refcoco, refytvos
from tpo.datamodules.formats._frames import write_frames
from tpo.datamodules.samples import ConversationSample, MomentSample, RefSample
from tpo.tasks import BUILTIN_TASKS, get_task

__all__ = ["COLOURS", "DIRECTIONS", "SHAPES", "SyntheticDataset", "make_synthetic_dataset",
           "random_objects", "render_clip", "write_h264"]

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
           "yellow": (240, 220, 40)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUND = (30, 30, 30)
CONVERSATION = "conversation"
"""The samples without a head: conversations (LLaVA format), trained with the language loss only."""
TASKS = (*BUILTIN_TASKS, CONVERSATION)
"""What the generator writes: a split of every built-in task, and conversations."""


@dataclass
class ObjectSpec:
    """One object of a clip: its looks, motion, and visible frames ``[appear, disappear)``."""

    colour: str
    shape: str
    direction: str
    appear: int
    disappear: int
    start_xy: tuple[float, float]
    speed: float
    radius: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def center(self, t: int) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        k = t - self.appear
        return self.start_xy[0] + dx * self.speed * k, self.start_xy[1] + dy * self.speed * k


def _shape_mask(shape: str, cx: float, cy: float, r: float, ys: np.ndarray, xs: np.ndarray
                ) -> np.ndarray:
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xs - cx) <= r * 0.85) & (np.abs(ys - cy) <= r * 0.85)
    # upward triangle: apex at (cx, cy - r), base at y = cy + r
    return (ys <= cy + r) & (np.abs(xs - cx) <= (ys - (cy - r)) * 0.5 + 0.5)


def render_clip(objects: list[ObjectSpec], size: int, num_frames: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Draw the objects (later ones on top).

    Returns:
        frames: ``(T, size, size, 3)`` uint8 RGB.
        labels: ``(T, size, size)`` uint8, ``k + 1`` where object ``k`` is the visible one.
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    labels = np.zeros((num_frames, size, size), dtype=np.uint8)
    for k, obj in enumerate(objects):
        for t in range(obj.appear, obj.disappear):
            cx, cy = obj.center(t)
            mask = _shape_mask(obj.shape, cx, cy, obj.radius, ys, xs)
            frames[t][mask] = COLOURS[obj.colour]
            labels[t][mask] = k + 1
    return frames, labels


def write_h264(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 12) -> None:
    """Write ``(T, H, W, 3)`` uint8 frames (even H, W) as an H.264 mp4 with PyAV's libx264."""
    import av

    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"frames: H.264 in yuv420p needs even sizes, got {h}x{w}")
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _bbox_xywh(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()],
                    dtype=np.float64)


def random_objects(rng: np.random.Generator, size: int, num_frames: int,
                   object_size: tuple[float, float] = (0.11, 0.15),
                   visible_fraction: tuple[float, float] = (0.25, 1.0)) -> list[ObjectSpec]:
    """Two random objects of one clip (distinct looks), for :func:`render_clip`.

    Each object is visible for ``visible_fraction`` of the ``num_frames`` frames (at least 3),
    has a radius of ``object_size`` times ``size`` pixels and moves in a straight line that
    stays inside the frame. The defaults are :func:`make_synthetic_dataset`'s.
    """
    looks = [(c, s) for c in COLOURS for s in SHAPES]
    picks = rng.choice(len(looks), size=2, replace=False)
    shortest = max(min(3, num_frames), int(visible_fraction[0] * num_frames))
    longest = max(shortest, min(num_frames, int(visible_fraction[1] * num_frames)))
    objects = []
    for k in picks:
        colour, shape = looks[int(k)]
        length = int(rng.integers(shortest, longest + 1))
        appear = int(rng.integers(0, num_frames - length + 1))
        direction = str(rng.choice(list(DIRECTIONS)))
        radius = size * float(rng.uniform(*object_size))
        speed = size * 0.45 / max(num_frames - 1, 1)
        travel = speed * (length - 1)
        dx, dy = DIRECTIONS[direction]
        margin = radius + 1
        lo_x = margin + max(0.0, -dx * travel)
        hi_x = size - margin - max(0.0, dx * travel)
        lo_y = margin + max(0.0, -dy * travel)
        hi_y = size - margin - max(0.0, dy * travel)
        start = (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)))
        objects.append(ObjectSpec(colour, shape, direction, appear, appear + length, start,
                                  speed, radius))
    return objects


@dataclass
class SyntheticDataset:
    """What :func:`make_synthetic_dataset` wrote: parameters, files and per-clip ground truth.

    ``files[split][task]`` is a path relative to ``root``; :meth:`samples` reads it back through
    the public format readers.
    """

    root: str
    size: int
    num_frames: int
    fps: float
    track_format: str
    files: dict[str, dict[str, str]]
    clips: dict[str, list[dict]] = field(default_factory=dict)

    def path(self, split: str, task: str) -> str:
        return os.path.join(self.root, self.files[split][task])

    def samples(self, task: str, split: str = "train") -> list:
        """The split's samples of ``task`` (one of :data:`TASKS`) as read by the format readers
        (:meth:`tpo.tasks.Task.read_synthetic`; conversations through the LLaVA reader)."""
        if task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
        if task == CONVERSATION:
            return llava.read(self.path(split, task), self.root)
        return get_task(task).read_synthetic(self, split)

    @classmethod
    def load(cls, root: str | os.PathLike) -> SyntheticDataset:
        """Read ``root/synthetic.json``."""
        with open(os.path.join(root, "synthetic.json")) as f:
            data = json.load(f)
        return cls(root=os.fspath(root), **data)


def _questions(objects: list[ObjectSpec], rng: np.random.Generator) -> list[dict]:
    a, b = objects
    first = a if a.appear < b.appear else b if b.appear < a.appear else None
    pool = [
        (f"What colour is the {a.shape}?", a.colour) if a.shape != b.shape else None,
        (f"What shape is the {a.colour} object?", a.shape) if a.colour != b.colour else None,
        (f"Which way does the {a.name} move?", a.direction),
        (f"Which way does the {b.name} move?", b.direction),
        (f"Which appears first, the {a.name} or the {b.name}?", first.name) if first else None,
    ]
    pool = [q for q in pool if q is not None]
    turns = []
    for i in rng.permutation(len(pool))[:2]:
        question, answer = pool[int(i)]
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    turns[0]["value"] = "<video>\n" + turns[0]["value"]
    return turns


def make_synthetic_dataset(root: str | os.PathLike, n_videos: int = 200, *, size: int = 48,
                           num_frames: int = 16, fps: float = 8.0, val_fraction: float = 0.2,
                           seed: int = 0, track_format: str = "got10k",
                           object_size: tuple[float, float] = (0.11, 0.15),
                           visible_fraction: tuple[float, float] = (0.25, 1.0)) -> SyntheticDataset:
    """Write ``n_videos`` clips and their annotations under ``root`` (see the module docstring).

    Args:
        root: output folder (created; must not already hold a dataset).
        n_videos: number of clips; the last ``val_fraction`` of them form the ``val`` split.
        size: frame height and width in pixels (even).
        num_frames: frames per clip.
        fps: frame rate of the clips.
        val_fraction: fraction of clips in ``val``.
        seed: everything is a function of the seed.
        track_format: ``"got10k"`` or ``"lasot"`` layout for the tracking sequences.
        object_size: range of the objects' radius, as a fraction of ``size``.
        visible_fraction: range of the fraction of the clip each object is visible (at least
            3 frames); shorter windows make temporal grounding harder to pass by chance.

    Returns:
        The :class:`SyntheticDataset` (also saved as ``root/synthetic.json``).
    """
    if size % 2 or size < 16:
        raise ValueError(f"size: expected an even frame size >= 16, got {size}")
    if num_frames < 4:
        raise ValueError(f"num_frames: expected at least 4, got {num_frames}")
    if not 0.02 <= object_size[0] <= object_size[1] <= 0.3:
        raise ValueError(f"object_size: expected 0.02 <= low <= high <= 0.3, got {object_size}")
    if not 0 < visible_fraction[0] <= visible_fraction[1] <= 1:
        raise ValueError(f"visible_fraction: expected 0 < low <= high <= 1, got {visible_fraction}")
    if track_format not in ("got10k", "lasot"):
        raise ValueError(f"track_format: expected 'got10k' or 'lasot', got {track_format!r}")
    root = os.fspath(root)
    if os.path.exists(os.path.join(root, "synthetic.json")):
        raise ValueError(f"{root}: already holds a synthetic dataset (synthetic.json)")
    for sub in ("videos", "images"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rng = np.random.default_rng(seed)
    n_val = int(round(n_videos * val_fraction))
    splits = {"train": range(n_videos - n_val), "val": range(n_videos - n_val, n_videos)}
    files: dict[str, dict[str, str]] = {}
    clips: dict[str, list[dict]] = {}
    duration = num_frames / fps
    for split, indices in splits.items():
        moments, refs, conversations, meta = [], [], [], {}
        clips[split] = []
        for i in indices:
            vid = f"clip{i:05d}"
            objects = random_objects(rng, size, num_frames, object_size, visible_fraction)
            frames, labels = render_clip(objects, size, num_frames)
            write_h264(os.path.join(root, "videos", f"{vid}.mp4"), frames, fps)
            areas = [(labels == k + 1).sum(axis=(1, 2)) for k in range(len(objects))]
            for k, obj in enumerate(objects):
                visible = areas[k] > 0
                full = max(float(areas[k].max()), 1.0)
                saliency = np.where(visible, np.clip(np.ceil(4 * areas[k] / full), 1, 4), 0)
                frames_on = np.flatnonzero(visible)
                moments.append(MomentSample(
                    vid=vid, query=f"When is the {obj.name} visible?",
                    windows=[[frames_on[0] / fps, (frames_on[-1] + 1) / fps]], duration=duration,
                    qid=f"{vid}_{k}", saliency=saliency, clip_len=1.0 / fps))
            # mask: every object, one expression each (its JPEG frames are linked, not encoded
            # again, by the box and tracking layouts)
            names = refytvos.write_video(os.path.join(root, "refytvos"), split, vid, frames,
                                         labels)
            meta[vid] = (names, {str(k): (f"the {o.name} moving {o.direction}", k + 1)
                                 for k, o in enumerate(objects)})
            jpegs = [os.path.join(root, "refytvos", split, "JPEGImages", vid, f"{n}.jpg")
                     for n in names]
            # box: the frame where the first object is largest
            t_box = int(np.argmax(areas[0]))
            image = os.path.join(root, "images", f"{vid}.jpg")
            write_frames(os.path.dirname(image), jpegs[t_box:t_box + 1], [f"{vid}.jpg"])
            x, y, w, h = _bbox_xywh(labels[t_box] == 1)
            refs.append(RefSample(image=image, expression=f"the {objects[0].name}",
                                  box_xyxy=[x, y, x + w, y + h], image_size=(size, size),
                                  ref_id=vid))
            # track: the first object from its first visible frame to the end
            visible0 = areas[0] > 0
            t0 = int(np.flatnonzero(visible0)[0])
            boxes = np.stack([_bbox_xywh(labels[t] == 1) if visible0[t] else np.zeros(4)
                              for t in range(t0, num_frames)])
            if track_format == "got10k":
                got10k.write(os.path.join(root, "got10k"), split, vid, jpegs[t0:], boxes,
                             visible0[t0:], category=objects[0].shape)
            else:
                lasot.write(os.path.join(root, "lasot", split), f"{objects[0].shape}-{i}",
                            jpegs[t0:], boxes, visible0[t0:],
                            description=f"the {objects[0].name} moving {objects[0].direction}")
            conversations.append(ConversationSample(
                media=os.path.join(root, "videos", f"{vid}.mp4"),
                conversations=_questions(objects, rng), kind="video", id=vid))
            clips[split].append({"vid": vid, "objects": [asdict(o) for o in objects]})
        files[split] = {
            "temporal": f"qvhighlights_{split}.jsonl", "box": f"refs_{split}.json",
            "track": f"got10k/{split}" if track_format == "got10k" else f"lasot/{split}",
            "mask": "refytvos", "conversation": f"llava_{split}.json", "videos": "videos"}
        qvhighlights.write(os.path.join(root, files[split]["temporal"]), moments)
        refcoco.write_flat(os.path.join(root, files[split]["box"]), refs, root)
        refytvos.write_meta(os.path.join(root, "refytvos"), split, meta)
        llava.write(os.path.join(root, files[split]["conversation"]), conversations, root)
    dataset = SyntheticDataset(root=root, size=size, num_frames=num_frames, fps=fps,
                               track_format=track_format, files=files, clips=clips)
    with open(os.path.join(root, "synthetic.json"), "w") as f:
        payload = asdict(dataset)
        payload.pop("root")
        json.dump(payload, f)
    return dataset

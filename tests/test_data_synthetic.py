"""The synthetic dataset: written in the public formats, read back by the readers, and its
annotations agree with the decoded pixels (so the queries are learnable from them)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tpo.datamodules import SyntheticDataset, VideoReader, make_synthetic_dataset
from tpo.datamodules.formats._frames import read_label_map
from tpo.datamodules.synthetic import COLOURS, DIRECTIONS

N, SIZE, T, FPS = 10, 32, 8, 4.0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SyntheticDataset:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, N, size=SIZE, num_frames=T, fps=FPS, seed=3)
    return SyntheticDataset.load(root)


def _labels(data, split, vid):
    mask_samples = {s.name.split("/")[0]: s for s in data.samples("mask", split)}
    return np.stack([read_label_map(p.replace("JPEGImages", "Annotations").replace(".jpg", ".png"))
                     for p in mask_samples[vid].frames])


def test_every_task_reads_back_through_the_public_readers(data):
    counts = {task: (len(data.samples(task, "train")), len(data.samples(task, "val")))
              for task in ("temporal", "box", "track", "mask", "conversation")}
    assert counts == {"temporal": (16, 4), "box": (8, 2), "track": (8, 2), "mask": (16, 4),
                      "conversation": (8, 2)}
    video = VideoReader(data.path("train", "videos") + "/clip00000.mp4")
    assert len(video) == T and video.duration == pytest.approx(T / FPS)
    assert video.get_frames([0]).frames.shape == (1, SIZE, SIZE, 3)


def test_moments_match_the_pixels(data):
    for s in data.samples("temporal", "train"):
        k = int(s.qid.split("_")[1])
        labels = _labels(data, "train", s.vid)
        on = np.flatnonzero((labels == k + 1).any(axis=(1, 2)))
        np.testing.assert_allclose(s.windows, [[on[0] / FPS, (on[-1] + 1) / FPS]])
        assert s.saliency.shape == (T,) and s.clip_len == pytest.approx(1 / FPS)
        assert (s.saliency > 0).tolist() == (labels == k + 1).any(axis=(1, 2)).tolist()
        colour, shape = s.query.split()[3:5]
        frames = VideoReader(f"{data.root}/videos/{s.vid}.mp4").get_frames(on).frames
        inside = frames[labels[on] == k + 1].astype(int)
        # the decoded pixels under the object's mask carry its colour (H.264 chroma blur aside)
        assert np.abs(np.median(inside, 0) - COLOURS[colour]).max() < 40
        assert shape in ("circle", "square", "triangle")


def test_boxes_tracks_and_answers_match_the_masks(data):
    clips = {c["vid"]: c for c in data.clips["train"]}
    for ref in data.samples("box", "train"):
        image = VideoReader(ref.image).get_frames([0]).frames[0].astype(int)
        x1, y1, x2, y2 = ref.box_xyxy.astype(int)
        colour = ref.expression.split()[1]
        crop = image[y1:y2, x1:x2]
        share = (np.abs(crop - COLOURS[colour]).max(-1) < 60).mean()
        assert share > 0.3, (ref.ref_id, share)
    for track in data.samples("track", "train"):
        labels = _labels(data, "train", track.name)
        start = int(np.flatnonzero((labels == 1).any(axis=(1, 2)))[0])
        for t, (box, vis) in enumerate(zip(track.boxes_xywh, track.visible, strict=True)):
            mask = labels[start + t] == 1
            assert vis == mask.any()
            if vis:
                ys, xs = np.nonzero(mask)
                np.testing.assert_allclose(box, [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1])
    for conv in data.samples("conversation", "train"):
        objects = clips[conv.id]["objects"]
        for q, a in zip(conv.conversations[::2], conv.conversations[1::2], strict=True):
            q = q["value"]
            if "move" in q:
                target = next(o for o in objects if f"{o['colour']} {o['shape']}" in q)
                assert a["value"] == target["direction"] and a["value"] in DIRECTIONS
            elif q.startswith("What colour") or "<video>\nWhat colour" in q:
                assert a["value"] == objects[0]["colour"]


def test_masks_keep_absent_frames_empty(data):
    absent = 0
    for s in data.samples("mask", "train"):
        masks = s.load_masks()
        assert masks.shape == (1, T, SIZE, SIZE)
        absent += int((~masks.any(axis=(2, 3))).sum())
    assert absent > 0  # objects appear late / leave early in some clips


def test_seeded_and_validated(tmp_path):
    make_synthetic_dataset(tmp_path / "a", 3, size=SIZE, num_frames=T, seed=7)
    make_synthetic_dataset(tmp_path / "b", 3, size=SIZE, num_frames=T, seed=7)
    for name in ("qvhighlights_train.jsonl", "refs_train.json"):
        a = (tmp_path / "a" / name).read_text().replace(str(tmp_path / "a"), "")
        b = (tmp_path / "b" / name).read_text().replace(str(tmp_path / "b"), "")
        assert a == b
    manifest = json.loads((tmp_path / "a" / "synthetic.json").read_text())
    assert manifest["num_frames"] == T and set(manifest["files"]) == {"train", "val"}
    with pytest.raises(ValueError, match="already holds"):
        make_synthetic_dataset(tmp_path / "a", 3)
    with pytest.raises(ValueError, match="even"):
        make_synthetic_dataset(tmp_path / "c", 3, size=33)


def test_lasot_layout_option(tmp_path):
    data = make_synthetic_dataset(tmp_path, 3, size=SIZE, num_frames=T, track_format="lasot")
    tracks = data.samples("track", "train")
    assert len(tracks) == 2 and tracks[0].visible[0] and tracks[0].description.startswith("the ")


def test_object_size_and_visible_fraction_shape_the_clips(tmp_path):
    data = make_synthetic_dataset(tmp_path / "d", 6, size=SIZE, num_frames=T, seed=5,
                                  object_size=(0.2, 0.22), visible_fraction=(0.25, 0.5))
    for clips in data.clips.values():
        for clip in clips:
            for obj in clip["objects"]:
                assert 0.2 * SIZE <= obj["radius"] <= 0.22 * SIZE
                assert 3 <= obj["disappear"] - obj["appear"] <= T // 2
    for moment in data.samples("temporal", "train"):  # windows: frames not hidden by the other object
        (start, end), = moment.windows
        assert 0 < end - start <= T / 2 / FPS + 1e-6
    with pytest.raises(ValueError, match="object_size"):
        make_synthetic_dataset(tmp_path / "e", 3, object_size=(0.2, 0.1))
    with pytest.raises(ValueError, match="visible_fraction"):
        make_synthetic_dataset(tmp_path / "f", 3, visible_fraction=(0.0, 0.5))

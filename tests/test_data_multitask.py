"""Task datasets (items in the heads' units), error handling, the multi-task sampler and the
Lightning data module."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from test_data_collate import FakeProcessor, make_tokenizer
from torch.utils.data import DistributedSampler

from tpo.datamodules import (
    DatasetSpec,
    MaskDataset,
    MomentDataset,
    MultiTaskDataModule,
    MultiTaskSampler,
    RefDataset,
    SyntheticDataset,
    TaskCollator,
    TrackDataset,
    VideoDecodeError,
    make_synthetic_dataset,
)
from tpo.datamodules.formats._frames import read_label_map
from tpo.datamodules.samples import MomentSample, TrackSample

SIZE, T, FPS = 32, 8, 4.0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SyntheticDataset:
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, 10, size=SIZE, num_frames=T, fps=FPS, seed=1)


@pytest.fixture(scope="module")
def collator() -> TaskCollator:
    return TaskCollator(processor=FakeProcessor(make_tokenizer("<s> $A")))


# ---------------------------------------------------------------------- items
def test_moment_items(data):
    samples = data.samples("temporal", "train")
    ds = MomentDataset(samples, f"{data.root}/videos", num_frames=4, sampling="middle")
    item = ds[3]
    s = samples[3]
    (start, end), = s.windows / s.duration
    np.testing.assert_allclose(item["target"]["spans"], [[(start + end) / 2, end - start]],
                               rtol=1e-6)
    # VideoChat2 "middle" of 4 segments of 8 frames, ranges (0, 1), (2, 3), ...: (a + b) // 2
    # = 0, 2, 4, 6 -> the saliency of those frames (one clip per frame here)
    np.testing.assert_allclose(item["meta"]["timestamps"], np.array([0, 2, 4, 6]) / FPS)
    np.testing.assert_allclose(item["target"]["saliency"], s.saliency[[0, 2, 4, 6]])
    assert item["video"].shape == (4, SIZE, SIZE, 3) and item["video"].dtype == np.uint8
    assert s.query.rstrip("?") in item["turns"][0][0] or s.query in item["turns"][0][0]
    assert item["turns"][0][1] == "<time_begin><temp>" and item["meta"]["duration"] == s.duration

    rand = MomentDataset(samples, f"{data.root}/videos", num_frames=4, sampling="random")
    assert np.array_equal(rand[(3, 11)]["meta"]["timestamps"], rand[(3, 11)]["meta"]["timestamps"])
    draws = {tuple(rand[(3, seed)]["meta"]["timestamps"]) for seed in range(8)}
    assert len(draws) > 1


def test_track_ref_and_mask_items(data):
    tracks = data.samples("track", "train")
    item = TrackDataset(tracks, num_frames=4, sampling="random")[(2, 5)]
    s = tracks[2]
    idx = item["meta"]["frame_indices"]
    assert idx[0] == 0
    x, y, w, h = s.boxes_xywh[0]
    np.testing.assert_allclose(item["prompt_boxes"][0],
                               [(x + w / 2) / SIZE, (y + h / 2) / SIZE, w / SIZE, h / SIZE],
                               rtol=1e-5)
    np.testing.assert_array_equal(item["target"]["visible"], s.visible[idx])
    assert not item["target"]["boxes"][~item["target"]["visible"]].any()

    refs = data.samples("box", "train")
    ref = RefDataset(refs)[0]
    x1, y1, x2, y2 = refs[0].box_xyxy
    np.testing.assert_allclose(ref["target"]["boxes"], [(x1 + x2) / 2 / SIZE, (y1 + y2) / 2 / SIZE,
                                                        (x2 - x1) / SIZE, (y2 - y1) / SIZE],
                               rtol=1e-5)
    assert ref["image"].shape == (SIZE, SIZE, 3)

    masks = data.samples("mask", "train")
    ds = MaskDataset(masks, num_frames=4, frame_size=(16, 16))
    m = ds[1]
    labels = np.stack([read_label_map(p.replace("JPEGImages", "Annotations")
                                      .replace(".jpg", ".png")) for p in masks[1].frames])
    obj = masks[1].object_ids[0]
    full = MaskDataset(masks, num_frames=4)[1]
    np.testing.assert_array_equal(full["target"]["masks"], labels[[0, 2, 4, 7]] == obj)
    assert m["target"]["masks"].shape == (4, 16, 16) and m["video"].shape == (4, 16, 16, 3)
    # nearest-neighbour 2x downscale keeps the pixel at the centre of each 2x2 cell (PIL: 2i + 1)
    np.testing.assert_array_equal(m["target"]["masks"], full["target"]["masks"][:, 1::2, 1::2])


# ---------------------------------------------------------------------- bad input
def test_missing_and_corrupt_videos(tmp_path, data):
    samples = data.samples("temporal", "train")[0:6:2]  # three different videos
    assert len({s.vid for s in samples}) == 3
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(f"{data.root}/videos/{samples[2].vid}.mp4", videos)
    (videos / f"{samples[1].vid}.mp4").write_bytes(b"garbage" * 100)  # corrupt; [0] missing
    strict = MomentDataset(samples, videos, num_frames=2)
    with pytest.raises(FileNotFoundError, match=f"{samples[0].vid}.mp4"):
        strict[0]
    with pytest.raises(VideoDecodeError, match=f"{samples[1].vid}.mp4"):
        strict[1]
    lenient = MomentDataset(samples, videos, num_frames=2, on_error="skip")
    item = lenient[0]
    assert item["id"] == samples[2].qid
    assert len(item["skipped"]) == 2 and f"{samples[0].vid}.mp4" in item["skipped"][0]
    assert f"{samples[1].vid}.mp4" in item["skipped"][1]
    with pytest.raises(RuntimeError, match="no sample could be loaded"):
        MomentDataset(samples[:2], videos, num_frames=2, on_error="skip")[0]


def test_bad_annotations_name_the_sample(data):
    bad = MomentSample(vid="clip00000", query="q", windows=[[1.0, 9.0]], duration=2.0, qid="x7")
    with pytest.raises(ValueError, match=r"clip00000 \(qid x7\).*duration=2.0"):
        MomentDataset([bad], f"{data.root}/videos")[0]
    good = data.samples("track", "train")[0]
    boxes = good.boxes_xywh.copy()
    boxes[0] = [20, 20, 30, 5]  # 20 + 30 > 32 px
    shifted = TrackSample(good.name, good.frames, boxes, good.visible, good.fps)
    with pytest.raises(ValueError, match=f"sample {good.name}: frame 0 box.*32x32"):
        TrackDataset([shifted])[0]


# ---------------------------------------------------------------------- sampler
def test_sampler_is_seeded_weighted_and_covers_each_dataset():
    sampler = MultiTaskSampler([30, 10], [3.0, 1.0], num_samples=4000, seed=4)
    keys = list(sampler)
    assert keys == list(MultiTaskSampler([30, 10], [3.0, 1.0], num_samples=4000, seed=4))
    share = Counter(d for d, _, _ in keys)[0] / len(keys)
    assert abs(share - 0.75) < 0.03  # binomial sd 0.007
    first_30 = [i for d, i, _ in keys if d == 0][:30]
    assert sorted(first_30) == list(range(30))  # no repeat before the dataset is covered
    sampler.set_epoch(1)
    assert list(sampler) != keys
    assert isinstance(sampler, DistributedSampler)  # Lightning leaves it alone under DDP
    with pytest.raises(ValueError, match="weights"):
        MultiTaskSampler([3, 3], [1.0])


def test_sampler_splits_across_ranks():
    full = MultiTaskSampler([7, 4], num_samples=15, seed=2, num_replicas=1, rank=0)
    ranks = [list(MultiTaskSampler([7, 4], num_samples=15, seed=2, num_replicas=2, rank=r))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 8
    merged = [k for pair in zip(*ranks, strict=True) for k in pair]
    keys = list(full)
    assert merged[:15] == keys and merged[15] == keys[0]  # padded by repetition
    val = [list(MultiTaskSampler([3, 2], shuffle=False, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(val[0]) == len(val[1]) == 3
    real = [k for k in val[0] + val[1] if len(k) == 3]
    assert sorted(real) == [(0, 0, 0), (0, 1, 0), (0, 2, 0), (1, 0, 0), (1, 1, 0)]  # each once
    assert [k for k in val[0] + val[1] if len(k) == 4] == [(0, 0, 0, True)]  # the marked repeat


def test_a_padding_repeat_is_marked_in_the_item_meta(data, collator):
    dm = MultiTaskDataModule.from_synthetic(data.root, collator=collator, num_frames=4)
    dataset = dm.val_set
    plain, repeat = dataset[(0, 0, 0)], dataset[(0, 0, 0, True)]
    assert "padding" not in plain["meta"] and repeat["meta"]["padding"] is True
    assert plain["turns"] == repeat["turns"]


# ---------------------------------------------------------------------- data module
def test_data_module_batches_are_mixed_and_deterministic(data, collator):
    def first_batches(seed):
        dm = MultiTaskDataModule.from_synthetic(
            data.root, collator=collator, batch_size=6, seed=seed, num_frames=4,
            weights={"temporal": 1, "box": 1, "track": 1, "mask": 1, "conversation": 1})
        loader = dm.train_dataloader()
        return [b for _, b in zip(range(2), loader, strict=False)], dm

    (a, dm), (b, _) = first_batches(0), first_batches(0)
    c, _ = first_batches(1)
    for x, y in zip(a, b, strict=True):
        assert x["tasks"] == y["tasks"] and torch.equal(x["input_ids"], y["input_ids"])
    assert [x["tasks"] for x in a] != [x["tasks"] for x in c]
    assert len({t for x in a for t in x["tasks"]}) >= 3
    val = list(dm.val_dataloader())
    assert sum(len(x["tasks"]) for x in val) == sum(dm.val_set.sizes)
    assert dm.val_set.names == ["temporal", "box", "track", "mask", "conversation"]


def test_data_module_skips_counts_and_goes_on(tmp_path, data, collator):
    samples = data.samples("temporal", "train")
    videos = tmp_path / "videos"
    shutil.copytree(f"{data.root}/videos", videos)
    os.remove(videos / f"{samples[5].vid}.mp4")
    dm = MultiTaskDataModule(
        train={"temporal": MomentDataset(samples, videos, num_frames=2, on_error="skip")},
        collator=collator, batch_size=4, num_workers=1)
    seen = 0
    for batch in dm.train_dataloader():
        batch = dm.on_before_batch_transfer(batch, 0)
        seen += len(batch["tasks"])
    assert seen == len(samples)  # the epoch went on at full length
    bad = {f"MomentDataset[{i}]" for i, s in enumerate(samples) if s.vid == samples[5].vid}
    assert {m.split(":")[0] for m in dm.skipped} == bad  # every failed load was counted
    assert dm.num_skipped == len(dm.skipped) >= len(bad)
    assert all(f"{samples[5].vid}.mp4" in m for m in dm.skipped)


def test_yaml_config_describes_datasets_by_format(data, collator):
    from jsonargparse import ArgumentParser

    d = data.root
    config = f"""
data:
  train:
    temporal: {{format: qvhighlights, path: {d}/qvhighlights_train.jsonl, media_root: {d}/videos,
                read_options: {{clip_len: 0.25}}, options: {{num_frames: 4, sampling: random}}}}
    box: {{format: refcoco_flat, path: {d}/refs_train.json, media_root: {d}}}
    track: {{format: got10k, path: {d}/got10k, read_options: {{split: train}}}}
    mask: {{format: refytvos, path: {d}/refytvos, options: {{num_frames: 4}}}}
    chat: {{format: llava, path: {d}/llava_train.json, media_root: {d}}}
  weights: {{temporal: 2.0, chat: 1.0}}
  batch_size: 4
"""
    parser = ArgumentParser(parser_mode="omegaconf")
    parser.add_class_arguments(MultiTaskDataModule, "data")
    dm = parser.instantiate(parser.parse_string(config)).data
    assert dm.train_set.names == ["temporal", "box", "track", "mask", "chat"]
    assert dm.train_set.sizes == [16, 8, 8, 16, 8]
    assert dm.weights == [2.0, 0.0, 0.0, 0.0, 1.0]
    dm._collator = collator
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["tasks"]) <= {"temporal", "conversation"} and len(batch["tasks"]) == 4
    with pytest.raises(ValueError, match="format"):
        DatasetSpec(format="kinetics", path="x")
    with pytest.raises(ValueError, match="media_root"):
        DatasetSpec(format="qvhighlights", path=f"{d}/qvhighlights_train.jsonl",
                    read_options={"clip_len": 0.25}).build()
    with pytest.raises(ValueError, match="do not fit 8 scores and 1 clips"):  # 2 s clips
        DatasetSpec(format="qvhighlights", path=f"{d}/qvhighlights_train.jsonl").read()


def test_data_module_splits_batches_by_the_trainers_rank(data, collator):
    from types import SimpleNamespace

    def keys(rank):
        dm = MultiTaskDataModule.from_synthetic(data.root, collator=collator, batch_size=3,
                                                seed=5, tasks=("temporal", "box"))
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, lightning_module=None)
        loader = dm.train_dataloader()
        assert loader.sampler.num_replicas == 2 and loader.sampler.rank == rank
        return list(loader.sampler)

    r0, r1 = keys(0), keys(1)
    assert len(r0) == len(r1) == 12  # 24 samples over 2 ranks
    assert sorted(r0 + r1) == sorted(MultiTaskSampler([16, 8], num_samples=24, seed=5).keys())


def test_resize_matches_pil():
    from PIL import Image

    from tpo.datamodules.datasets import resize_frames

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 37, 53, 3), dtype=np.uint8)
    masks = rng.random((3, 37, 53)) > 0.5
    for h, w in [(20, 30), (64, 80), (37, 26)]:
        pil = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR))
                        for f in frames])
        assert np.abs(resize_frames(frames, (h, w)).astype(int) - pil).max() <= 1
        pil_masks = np.stack([np.asarray(Image.fromarray(m.astype(np.uint8)).resize(
            (w, h), Image.NEAREST)) for m in masks]).astype(bool)
        out = resize_frames(masks, (h, w))
        assert out.dtype == bool and np.array_equal(out, pil_masks)
    assert resize_frames(frames, None) is frames


def test_cached_datasets_give_the_same_items(data):
    samples = data.samples("temporal", "train")[:4]
    plain = MomentDataset(samples, f"{data.root}/videos", num_frames=4, sampling="random")
    cached = MomentDataset(samples, f"{data.root}/videos", num_frames=4, sampling="random",
                           cache=True)
    for key in [(0, 1), (1, 2), (0, 3), (3, 1)]:
        a, b = plain[key], cached[key]
        assert np.array_equal(a["video"], b["video"])
        np.testing.assert_array_equal(a["meta"]["timestamps"], b["meta"]["timestamps"])
    assert len(cached._readers) == len({s.vid for s in samples[:4]})
    assert all(r.is_open for r in cached._readers.values())
    masks = data.samples("mask", "train")[:2]
    m_plain, m_cached = MaskDataset(masks, num_frames=4), MaskDataset(masks, num_frames=4,
                                                                      cache=True)
    for key in [0, 1, 0]:
        assert np.array_equal(m_plain[key]["target"]["masks"], m_cached[key]["target"]["masks"])
        assert np.array_equal(m_plain[key]["video"], m_cached[key]["video"])

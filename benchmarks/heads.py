"""Cost of the four task heads relative to the LLM they sit on.

A LLaMA causal LM (by default 58M parameters) is built from a config (no download). One training
step (forward, backward, AdamW) on a batch of 4 sequences is timed twice, interleaved in the
same run: the LM loss alone, and the LM loss plus the temporal, box, tracking and mask heads
(default sizes) fed from the LLM's last hidden states — the task embeddings at four task-token
positions and the visual tokens at the first ``T * N`` positions, as in a LLaVA-style model.

    python benchmarks/heads.py [--steps 6] [--seq-len 256] [--threads 1] [--device cpu]

``--hidden-size``, ``--layers`` and ``--vocab-size`` shrink the LM (a smoke test runs
``--hidden-size 64 --layers 1 --vocab-size 512 --seq-len 72 --steps 1 --warmup 0``); the
figure is only meaningful at the default LM size, where the heads are a small part of a step.

On a CPU shared with other jobs, multi-threaded timings are erratic (OpenMP threads wait on
busy cores), so the default is one thread; the ratio, not the absolute time, is the figure.

Ends with ``heads_step_ratio: X (target <= 1.10)``: the fastest heads step over the fastest LM
step (other jobs on a shared machine only ever add time, so the minimum is the least noisy
estimate; the ratio of medians is printed beside it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tpo.heads import BoxHead, MaskHead, TemporalGroundingHead, TrackingHead

BATCH, FRAMES, GRID = 4, 4, 4  # 4 frames of 4x4 visual tokens


def build_lm(hidden_size: int = 512, layers: int = 8, vocab_size: int = 32000) -> LlamaForCausalLM:
    heads = max(1, hidden_size // 64)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=int(hidden_size * 2.6875),  # 1376 at 512
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def make_targets(generator: torch.Generator, device: torch.device) -> dict:
    def boxes(*shape: int) -> torch.Tensor:
        center = torch.rand(*shape, 2, generator=generator) * 0.4 + 0.3
        size = torch.rand(*shape, 2, generator=generator) * 0.3 + 0.1
        return torch.cat((center, size), -1)

    masks = torch.zeros(BATCH, FRAMES, 4 * GRID, 4 * GRID, dtype=torch.bool)
    masks[..., 3:9, 5:12] = True
    return {
        "temporal": [{"spans": torch.tensor([[0.3 + 0.1 * b, 0.2]], device=device)} for b in range(BATCH)],
        "box": {"boxes": boxes(BATCH).to(device)},
        "tracking": {
            "boxes": boxes(BATCH, FRAMES).to(device),
            "visible": torch.ones(BATCH, FRAMES, dtype=torch.bool, device=device),
        },
        "mask": {"masks": masks.to(device)},
    }


def head_losses(heads: dict, hidden: torch.Tensor, targets: dict) -> torch.Tensor:
    """Sum of all head losses on ``hidden (B, L, D)``."""
    num_visual = FRAMES * GRID * GRID
    visual = hidden[:, :num_visual].unflatten(1, (FRAMES, GRID * GRID))  # (B, T, N, D)
    task = hidden[:, -4:]  # one task token per head
    outputs = {
        "temporal": heads["temporal"](task[:, 0], visual.mean(2)),
        "box": heads["box"](task[:, 1], visual[:, 0]),
        "tracking": heads["tracking"](task[:, 2], visual),
        "mask": heads["mask"](task[:, 3], visual.transpose(2, 3).unflatten(-1, (GRID, GRID))),
    }
    return sum(sum(heads[name].loss(outputs[name], targets[name]).values()) for name in heads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--hidden-size", type=int, default=512, help="LM width (multiple of 64)")
    parser.add_argument("--layers", type=int, default=8, help="LM decoder layers")
    parser.add_argument("--vocab-size", type=int, default=32000)
    args = parser.parse_args()
    min_len = FRAMES * GRID * GRID + 4  # visual tokens + one task token per head
    if args.seq_len < min_len:
        parser.error(f"--seq-len: expected at least {min_len} (visual + task tokens), got {args.seq_len}")
    if args.hidden_size % 64 or args.hidden_size < 64:
        parser.error(f"--hidden-size: expected a positive multiple of 64, got {args.hidden_size}")
    if args.steps < 1:
        parser.error(f"--steps: expected at least 1, got {args.steps}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    lm = build_lm(args.hidden_size, args.layers, args.vocab_size).to(device)
    dim = lm.config.hidden_size
    heads = torch.nn.ModuleDict(
        {
            "temporal": TemporalGroundingHead(embed_dim=dim, video_dim=dim),
            "box": BoxHead(embed_dim=dim, visual_dim=dim),
            "tracking": TrackingHead(embed_dim=dim, visual_dim=dim),
            "mask": MaskHead(embed_dim=dim, image_dim=dim),
        }
    ).to(device)
    lm_params = sum(p.numel() for p in lm.parameters())
    head_params = sum(p.numel() for p in heads.parameters())
    params = [*lm.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=True)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, lm.config.vocab_size, (BATCH, args.seq_len), generator=generator)
    ids = ids.to(device)
    targets = make_targets(generator, device)

    def step(with_heads: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = lm(input_ids=ids, labels=ids, output_hidden_states=True)
        loss = out.loss
        if with_heads:
            loss = loss + head_losses(heads, out.hidden_states[-1], targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step(False)
        step(True)
    lm_times, head_times = [], []
    for _ in range(args.steps):
        lm_times.append(step(False))
        head_times.append(step(True))
    lm_best, head_best = min(lm_times), min(head_times)
    lm_median, head_median = statistics.median(lm_times), statistics.median(head_times)
    print(f"lm_params: {lm_params / 1e6:.1f}M  head_params: {head_params / 1e6:.2f}M")
    print(f"batch {BATCH} x {args.seq_len} tokens on {device}, threads {torch.get_num_threads()}")
    print(f"lm_step_s: best {lm_best:.3f} median {lm_median:.3f}")
    print(f"heads_step_s: best {head_best:.3f} median {head_median:.3f}")
    print(f"heads_step_ratio_median: {head_median / lm_median:.3f}")
    print(f"heads_step_ratio: {head_best / lm_best:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()

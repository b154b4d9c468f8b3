"""Worker for ``test_metrics_ddp.py``: every metric class, data sharded over a gloo group.

Run as ``python tests/ddp_metrics_worker.py OUT.json``: it forks two ranks (imports are paid
once) that join a gloo group through a file store; rank 0 writes the synced results.
``run(0, 1)`` gives the single-process values for the same data.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

from tpo.metrics import (
    QVHIGHLIGHTS_LENGTH_BUCKETS,
    GOT10kMetrics,
    GroundingAccuracy,
    HighlightDetection,
    JAndF,
    MomentRetrieval,
    TrackingSuccess,
)


def _windows(g: torch.Generator, n: int, scores: bool) -> torch.Tensor:
    start = torch.rand(n, generator=g, dtype=torch.float64) * 100
    out = [start, start + torch.rand(n, generator=g, dtype=torch.float64) * 40]
    if scores:
        out.append(torch.rand(n, generator=g, dtype=torch.float64))
    return torch.stack(out, -1)


def _boxes(g: torch.Generator, n: int) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 300
    return torch.cat([xy, torch.rand(n, 2, generator=g, dtype=torch.float64) * 100 + 1], -1)


def make_items(n: int = 9, seed: int = 0) -> list[dict]:
    """``n`` items, each holding one update's worth of input for every metric."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        gt_boxes = _boxes(g, 5)
        seq_gt = _boxes(g, 12)
        masks = torch.rand(3, 12, 70, generator=g) > 0.5
        items.append({
            "mr": ([_windows(g, 6, True)], [_windows(g, 2, False)]),
            "hl": ([torch.rand(15, generator=g, dtype=torch.float64)],
                   [torch.randint(0, 5, (15, 3), generator=g).to(torch.float64)]),
            "ground": (torch.cat([gt_boxes[:, :2], gt_boxes[:, :2] + gt_boxes[:, 2:]], -1),
                       torch.cat([gt_boxes[:, :2] + 10, gt_boxes[:, :2] + gt_boxes[:, 2:] + 10],
                                 -1)),
            "track": (seq_gt + torch.randn(12, 4, generator=g, dtype=torch.float64) * 5, seq_gt,
                      torch.rand(12, generator=g) > 0.2),
            "vos": (masks, masks ^ (torch.rand(3, 12, 70, generator=g) > 0.9)),
        })
    return items


def run(rank: int, world: int) -> dict[str, float]:
    metrics = {
        "mr": MomentRetrieval(length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS),
        "hl": HighlightDetection(),
        "ground": GroundingAccuracy(),
        "succ": TrackingSuccess(),
        "got": GOT10kMetrics(),
        "vos": JAndF(),
    }
    for item in make_items()[rank::world]:
        metrics["mr"].update(*item["mr"])
        metrics["hl"].update(*item["hl"])
        metrics["ground"].update(*item["ground"])
        metrics["succ"].update(*item["track"])
        metrics["got"].update(*item["track"])
        metrics["vos"].update(*item["vos"])
    out = {}
    for name, metric in metrics.items():
        for key, value in metric.compute().items():
            if value.ndim == 0:
                out[f"{name}/{key}"] = value.item()
    return out


def _rank(rank: int, world: int, store: str, path: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                         world_size=world)
    result = run(rank, world)
    if rank == 0:
        Path(path).write_text(json.dumps({"world_size": world, "metrics": result}))
    torch.distributed.destroy_process_group()


def main(path: str, world: int = 2) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank, args=(world, f"{tmp}/store", path), nprocs=world,
                           start_method="fork")


if __name__ == "__main__":
    main(sys.argv[1])

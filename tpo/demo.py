"""``tpo demo``: the embedded demo, offline, on a laptop CPU.

It writes a synthetic video dataset (moving coloured shapes as real H.264 files, annotations in
the public formats), builds a tiny LLaVA-OneVision and a tokenizer from configs, co-trains the
four heads with the language loss under a time budget, evaluates on the held-out split, prints a
table (task, metric, value, chance), writes it as ``metrics.json`` and draws the loss curves,
span timelines, boxes, tracks and masks. The trained model is saved as a
:class:`~tpo.predict.Predictor` folder (``out/model``) and asked every held-out question the way a
user would (generation, then the head): the ``(predictor)`` rows.

"Chance" is the same model, untrained, evaluated the same way (teacher-forced); the predictor rows
have none (an untrained model never calls a head, so it scores 0).

The output folder is never left half-written: the run writes everything into a hidden sibling,
``.<out>.partial``, and only when it has finished renames that onto ``out`` (a previous demo
output there is swapped out and deleted; an interrupted or failed run deletes its partial folder
and leaves ``out`` as it was). ``out`` must therefore be new, empty, or hold only what an earlier
``tpo demo`` wrote (its synthetic ``data/`` is reused); any other folder is refused before the run
starts, so the demo never deletes files it did not write.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, Trainer

from tpo.progress import progress_bar_callback
from tpo.tasks import get_task

__all__ = ["DEMO_DATA", "DEMO_MODEL", "HEADLINE_METRICS", "demo_main", "run_demo"]

#: The model the demo trains (also ``configs/demo.yaml``'s ``model``).
DEMO_MODEL: dict[str, Any] = {
    "backbone": {
        "name": "tiny_llava",
        "kind": "llava_onevision",
        "image_size": 32,
        "patch_size": 4,
        "hidden_size": 64,
        "num_layers": 2,
        "vision_hidden_size": 64,
        "vision_layers": 2,
    },
    "heads": {
        "temporal": {
            "hidden_dim": 64,
            "num_heads": 4,
            "num_encoder_layers": 2,
            "num_decoder_layers": 2,
            "dim_feedforward": 128,
            "dropout": 0.0,
        },
        "box": {"hidden_dim": 64, "num_heads": 4, "num_layers": 2, "dim_feedforward": 128},
        "track": {"hidden_dim": 64, "num_heads": 4, "num_layers": 2, "dim_feedforward": 128},
        "mask": {"hidden_dim": 64, "num_heads": 4, "num_layers": 2, "mlp_dim": 128, "high_res_dims": [3, 3]},
    },
    "stage": "full",
    "learning_rates": {
        "heads": 1e-3,
        "task_embeddings": 1e-3,
        "temporal_token": 1e-3,
        "vision": 5e-4,
        "llm": 1e-3,
    },
    "warmup_ratio": 0.02,
    "query_words": True,
}

#: How often each task's samples are drawn (temporal grounding learns slowest, so most often).
DEMO_TASK_WEIGHTS: dict[str, float] = {
    "temporal": 0.3,
    "mask": 0.2,
    "box": 0.15,
    "track": 0.25,
    "conversation": 0.10,
}

#: The synthetic clips: objects big enough to box at 32 px, visible for 25-60 % of the clip.
DEMO_DATA: dict[str, Any] = {
    "size": 32,
    "num_frames": 8,
    "object_size": (0.17, 0.22),
    "visible_fraction": (0.25, 0.6),
}

#: (task, metric key in the logs, name in the table)
HEADLINE_METRICS = (
    ("temporal", "val/temporal/R1@0.5", "R1@0.5"),
    ("temporal", "val/temporal/mIoU", "mIoU"),
    ("box", "val/box/acc@0.5", "Acc@0.5"),
    ("track", "val/track/success", "success AUC"),
    ("mask", "val/mask/J&F", "J&F"),
    ("assignment", "val/assign_acc", "accuracy"),
    ("language", "val/lm_loss", "loss"),
)


class LossHistory(Callback):
    """Keeps ``(step, value)`` of every training loss at every step, for the loss plot."""

    def __init__(self) -> None:
        self.history: dict[str, list[tuple[int, float]]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and key.endswith("loss"):
                self.history.setdefault(key[len("train/") :], []).append((trainer.global_step, float(value)))


def _make_trainer(**kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


#: The predictor's headline metric per task (keys of :func:`tpo.predict.evaluate_predictor`).
PREDICTOR_METRICS = {"temporal": "R1@0.5", "box": "acc@0.5", "track": "success", "mask": "J&F"}


def _table(metrics: dict) -> str:
    lines = [f"{'task':12s} {'metric':28s} {'value':>8s} {'chance':>8s}"]
    for task, rows in metrics.items():
        for name, row in rows.items():
            chance = "-" if row["chance"] is None else f"{row['chance']:8.3f}"
            lines.append(f"{task:12s} {name:28s} {row['value']:8.3f} {chance:>8s}")
    return "\n".join(lines)


def run_demo(
    out: Path,
    *,
    minutes: float = 8.0,
    n_videos: int = 300,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    modality_adaptive: bool = False,
) -> dict:
    """Write data, train, evaluate, plot. Returns the metrics table (also ``out/metrics.json``).

    Everything is written to ``.<out>.partial`` beside ``out`` and renamed onto ``out`` only once
    the run has finished (see the module docstring).

    Raises:
        ValueError: ``out`` is a file, or a folder holding files ``tpo demo`` does not write.
    """
    out = Path(out).resolve()
    work, old = _check_out(out)
    if old.exists():  # a run stopped between swapping its predecessor out and itself in
        if out.exists():
            shutil.rmtree(old)
        else:
            old.rename(out)
    if work.exists():  # the partial folder of an interrupted run
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        if (out / "data" / "synthetic.json").is_file():
            shutil.copytree(out / "data", work / "data")
        print(f"writing to {work}; it becomes {out} when the run has finished", flush=True)
        metrics = _run_demo_in(work, minutes=minutes, n_videos=n_videos, seed=seed,
                               batch_size=batch_size, progress=progress,
                               modality_adaptive=modality_adaptive)
        _publish(work, out, old)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"wrote {out / 'metrics.json'} and plots in {out}")
    return metrics


#: What ``tpo demo`` writes into its output folder (the only entries it may replace).
DEMO_OUTPUTS = frozenset({"data", "model", "metrics.json", "losses.png", "temporal_timeline.png",
                          "boxes.png", "tracking.png", "masks.png"})


def _check_out(out: Path) -> tuple[Path, Path]:
    """``(partial, old)`` sibling folders of ``out``, after checking that ``out`` may be replaced."""
    if not out.name:
        raise ValueError(f"--out {out}: a filesystem root cannot be the demo's output folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, expected a folder (new or from an earlier demo)")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_OUTPUTS) if out.is_dir() else []
    if foreign:
        raise ValueError(
            f"--out {out}: holds {foreign[:5]}{' ...' if len(foreign) > 5 else ''}, which tpo demo "
            "does not write; the demo replaces its whole output folder when it finishes, so give "
            f"it a new or empty folder (or one from an earlier demo: {sorted(DEMO_OUTPUTS)})")
    return out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.old")


def _publish(work: Path, out: Path, old: Path) -> None:
    """Rename the finished ``work`` folder onto ``out`` (each step one atomic rename)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists():
        out.rename(old)
    os.replace(work, out)
    if old.exists():
        shutil.rmtree(old)


def _run_demo_in(
    out: Path,
    *,
    minutes: float,
    n_videos: int,
    seed: int,
    batch_size: int,
    progress: bool,
    modality_adaptive: bool,
) -> dict:
    """The demo itself, writing into ``out`` (the partial folder)."""
    from tpo.datamodules import MultiTaskDataModule, make_synthetic_dataset
    from tpo.module import TPOModule

    torch.manual_seed(seed)
    data_root = out / "data"
    start = time.time()
    if not (data_root / "synthetic.json").exists():
        make_synthetic_dataset(data_root, n_videos=n_videos, seed=seed, **DEMO_DATA)
    print(f"[1/5] synthetic dataset ({time.time() - start:.0f} s)", flush=True)

    steps_estimate = max(50, int(minutes * 60 * 2.4))
    config = {**DEMO_MODEL, "backbone": {**DEMO_MODEL["backbone"], "modality_adaptive": modality_adaptive}}
    module = TPOModule(**config, schedule_steps=steps_estimate)
    data = MultiTaskDataModule.from_synthetic(
        data_root,
        backbone=module.backbone,
        batch_size=batch_size,
        num_frames=DEMO_DATA["num_frames"],
        seed=seed,
        num_workers=1,  # decoding and collation overlap the training step
        collator_options={"keep_media": True},
        weights=DEMO_TASK_WEIGHTS,
    )
    chance = _make_trainer(enable_progress_bar=False).validate(module, data, verbose=False)[0]
    print(f"[2/5] untrained model evaluated (chance levels); training for {minutes:g} min", flush=True)

    history = LossHistory()
    trainer = _make_trainer(
        max_time={"seconds": int(minutes * 60)},
        callbacks=[history, *([progress_bar_callback()] if progress else [])],
        log_every_n_steps=10,
        enable_progress_bar=progress,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    print(f"[3/5] trained {trainer.global_step} steps; evaluating on the held-out split", flush=True)
    final = _make_trainer(enable_progress_bar=False).validate(module, data, verbose=False)[0]

    metrics: dict[str, dict] = {}
    for task, key, name in HEADLINE_METRICS:
        if key in final:
            metrics.setdefault(task, {})[name] = {
                "value": float(final[key]),
                "chance": float(chance.get(key, 0.0)),
            }
            generated = key.replace("val/", "val_generated/")
            if generated in final:
                metrics[task][f"{name} (generated)"] = {
                    "value": float(final[generated]),
                    "chance": float(chance.get(generated, 0.0)),
                }
    first_lm = history.history.get("lm_loss", [(0, float("nan"))])[0][1]
    metrics.setdefault("language", {})["train loss first→last"] = {
        "value": history.history.get("lm_loss", [(0, float("nan"))])[-1][1],
        "chance": first_lm,
    }
    _draw(out, module, data, history)
    print("[4/5] saving the model as model/; the predictor answers the held-out questions")
    _predictor_rows(module, out, data_root, metrics, progress)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print("[5/5] held-out metrics (chance = the untrained model):")
    print(_table(metrics))
    print(f"({(time.time() - start) / 60:.1f} min in all)")
    return metrics


def _predictor_rows(module, out: Path, data_root: Path, metrics: dict, progress: bool) -> None:
    """Save the trained model as a predictor folder and score it on the held-out split."""
    from tpo.predict import Predictor, evaluate_predictor

    predictor = Predictor(module, num_frames=DEMO_DATA["num_frames"])
    predictor.save_pretrained(out / "model")
    scores = evaluate_predictor(predictor, data_root, "val", progress=progress)
    for task, values in scores.items():
        name = PREDICTOR_METRICS[task]
        rows = metrics.setdefault(task, {})
        rows[f"{name} (predictor)"] = {"value": float(values[name]), "chance": None}
        rows["task called (predictor)"] = {"value": float(values["assign_acc"]), "chance": None}
    module.train()


def _draw(out: Path, module, data, history: LossHistory) -> None:
    """Loss curves and one picture per task from the first validation batch holding it."""
    from tpo import viz

    viz.plot_losses(history.history, out / "losses.png")
    module.eval()
    drawn: set[str] = set()
    with torch.no_grad():
        for batch in data.val_dataloader():
            for item in module.predict_step(batch, 0):
                task = item["task"]
                if task is None or task in drawn:
                    continue
                drawn.add(task)
                _draw_item(out, task, item, batch)
            if drawn >= set(module.heads):
                break


def _draw_item(out: Path, task: str, item: dict, batch: dict) -> None:
    meta = item["meta"]
    index = next(i for i, m in enumerate(batch["meta"]) if m is meta)
    rows = batch["targets"][task]
    row = int((rows["sample_index"] == index).nonzero()[0, 0])
    get_task(task).draw(item["prediction"], rows, row, meta, _frames(meta, batch, index), out)


def _frames(meta: dict, batch: dict, index: int) -> np.ndarray:
    """The sample's frames ``(T, H, W, 3)`` uint8 as the collator received them."""
    frames = meta.get("frames")
    if frames is None:
        raise ValueError(f"meta of sample {index}: no 'frames' to draw")
    return np.asarray(frames)


def demo_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tpo demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    parser.add_argument("--videos", type=int, default=300, help="synthetic clips to write")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--modality-adaptive", action="store_true",
                        help="give the LLM mPLUG-Owl2's modality-adaptive layers")
    args = parser.parse_args(argv)
    try:
        _check_out(args.out.resolve())  # before minutes of work, not after
    except ValueError as err:
        parser.error(str(err))
    run_demo(
        args.out,
        minutes=args.minutes,
        n_videos=args.videos,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        modality_adaptive=args.modality_adaptive,
    )
    return 0

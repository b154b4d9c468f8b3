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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning import Callback, Trainer

from tpo.datamodules.synthetic import CONVERSATION
from tpo.datamodules.synthetic import TASKS as SYNTHETIC_TASKS
from tpo.progress import progress_bar_callback
from tpo.tasks import BUILTIN_TASKS, get_task

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from tpo.backbones.base import Backbone
    from tpo.datamodules import MultiTaskDataModule
    from tpo.module import TPOModule

__all__ = ["DEMO_DATA", "DEMO_MODEL", "DEMO_TASK_WEIGHTS", "HEADLINE_METRICS", "RunConfig", "TrainedRun",
           "demo_main", "fit_run", "make_data_module", "make_module", "module_config", "run_demo",
           "train_run", "validate"]

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
        "local_window": 8,
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
    "query_words": False,
    "loss_weights": {"mask": 2.0},
}

#: How often each task's samples are drawn.
DEMO_TASK_WEIGHTS: dict[str, float] = {
    "temporal": 0.25,
    "mask": 0.25,
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


@dataclass(frozen=True)
class RunConfig:
    """One training run of the demo's model on the synthetic data, trained and evaluated by
    :func:`train_run`: ``tpo demo`` trains the default one, ``tpo ablate`` (:mod:`tpo.ablate`)
    its variants.

    Attributes:
        tasks: the tasks trained and scored, in :data:`~tpo.tasks.BUILTIN_TASKS` names.
        textual: no heads: the LLM answers the tasks' questions in text
            (:meth:`~tpo.tasks.Task.textual_answer`); every task needs a ``textual_form``.
        conversation: train on the conversation data too (language loss only).
        query_words: the heads also read the query's words (:class:`~tpo.query.QueryWords`).
        query_words_fade: with a value ``f`` in (0, 1), the query words scaffold the first ``f``
            of the budget and fade out (:class:`~tpo.query.QueryWordsFade`); the trained model has
            none; a textual run (no heads) has no scaffold. ``None``: no scaffold (unless
            ``query_words``, which keeps them throughout). The demo's 0.4: the mask task alone,
            trained 2.5 min, reached J&F 0.85 with it and 0.61 without.
        echo_query: every task answer restates the query before the task call (or the textual
            answer): ``"the red circle <box_begin><boxes>"``
            (:func:`~tpo.datamodules.prompts.make_prompt`).
        seed: torch's seed at the start and the training sampler's seed.
        minutes: training time budget (wall clock).
        batch_size: samples per training and evaluation batch.
        modality_adaptive: give the LLM mPLUG-Owl2's modality-adaptive layers.
    """

    tasks: tuple[str, ...] = BUILTIN_TASKS
    textual: bool = False
    conversation: bool = True
    query_words: bool = DEMO_MODEL["query_words"]
    query_words_fade: float | None = 0.4
    echo_query: bool = True
    seed: int = 0
    minutes: float = 8.0
    batch_size: int = 16
    modality_adaptive: bool = False

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks: expected at least one task to train")
        unknown = [t for t in self.tasks if t not in DEMO_MODEL["heads"]]
        if unknown:
            raise ValueError(f"tasks: {unknown} are not tasks of the demo's model "
                             f"({list(DEMO_MODEL['heads'])})")
        if self.textual and self.query_words:
            raise ValueError("query_words: a textual run has no heads for the query words to feed")
        if self.query_words and self.query_words_fade is not None:
            raise ValueError("query_words, query_words_fade: words kept throughout or faded out, not both")
        if self.query_words_fade is not None and not 0 < self.query_words_fade < 1:
            raise ValueError(f"query_words_fade: expected a fraction of the budget in (0, 1), got "
                             f"{self.query_words_fade}")
        no_text = [t for t in self.tasks if not get_task(t).textual_form] if self.textual else []
        if no_text:
            raise ValueError(f"tasks: {no_text} have no textual form (Task.textual_form), so a "
                             "textual run cannot train them")
        if self.minutes <= 0 or self.batch_size < 1:
            raise ValueError(f"minutes, batch_size: expected > 0 and >= 1, got {self.minutes}, "
                             f"{self.batch_size}")

    @property
    def scaffold_seconds(self) -> float | None:
        """How long the query-word scaffold lasts (``None``: no scaffold)."""
        if self.textual or self.query_words_fade is None:
            return None
        return self.query_words_fade * self.minutes * 60

    @property
    def datasets(self) -> tuple[str, ...]:
        """The synthetic datasets trained on, in the generator's order: the tasks and, with
        ``conversation``, the conversations."""
        wanted = {*self.tasks, *((CONVERSATION,) if self.conversation else ())}
        return tuple(name for name in SYNTHETIC_TASKS if name in wanted)


@dataclass
class TrainedRun:
    """What :func:`train_run` returns.

    Attributes:
        run: the configuration.
        module: the trained module.
        data: the data module (training and held-out loaders).
        history: the training losses per step.
        steps: optimizer steps taken.
        final: the held-out validation logs of the trained module (``val/<task>/<metric>``,
            ``val_generated/...``, ``val/assign_acc``, ``val/lm_loss``), teacher-forced.
        chance: the same for the untrained module, when asked for; else ``None``.
    """

    run: RunConfig
    module: TPOModule
    data: MultiTaskDataModule
    history: LossHistory
    steps: int
    final: dict[str, float]
    chance: dict[str, float] | None = None


def module_config(run: RunConfig) -> dict[str, Any]:
    """The :class:`~tpo.TPOModule` keyword arguments of a run: :data:`DEMO_MODEL` with the run's
    heads (none when ``textual``) and their loss weights, ``query_words`` (on for the scaffold)
    and ``modality_adaptive``."""
    heads = {} if run.textual else {t: spec for t, spec in DEMO_MODEL["heads"].items() if t in run.tasks}
    backbone = {**DEMO_MODEL["backbone"], "modality_adaptive": run.modality_adaptive}
    words = run.query_words or run.scaffold_seconds is not None
    weights = {t: w for t, w in DEMO_MODEL["loss_weights"].items() if t in heads}
    return {**DEMO_MODEL, "backbone": backbone, "heads": heads, "query_words": words,
            "loss_weights": weights}


def make_module(run: RunConfig) -> TPOModule:
    """The untrained module of a run; its warmup and cosine follow the wall clock over the run's
    budget (:class:`~tpo.schedules.WallClockCosine`), so every machine and every variant of an
    ablation ends its schedule with its minutes."""
    from tpo.module import TPOModule

    return TPOModule(**module_config(run), schedule_seconds=run.minutes * 60)


def make_data_module(run: RunConfig, data_root: Path, backbone: Backbone) -> MultiTaskDataModule:
    """Training (random frames) and held-out (uniform frames) loaders over the run's synthetic
    datasets (:attr:`RunConfig.datasets`), mixed by :data:`DEMO_TASK_WEIGHTS`; with ``textual``
    the tasks' answers are text."""
    from tpo.datamodules import MultiTaskDataModule
    from tpo.datamodules.multitask import synthetic_task_dataset
    from tpo.datamodules.synthetic import SyntheticDataset

    data = SyntheticDataset.load(data_root)
    options = {"num_frames": DEMO_DATA["num_frames"], "seed": run.seed, "cache": True, "textual": run.textual,
               "echo_query": run.echo_query}
    split = {split: {name: synthetic_task_dataset(data, name, split, sampling=sampling, **options)
                     for name in run.datasets}
             for split, sampling in (("train", "random"), ("val", "uniform"))}
    return MultiTaskDataModule(
        train=split["train"],
        val=split["val"],
        backbone=backbone,
        batch_size=run.batch_size,
        seed=run.seed,
        num_workers=1,  # decoding and collation overlap the training step
        collator_options={"keep_media": True},
        weights={name: DEMO_TASK_WEIGHTS[name] for name in run.datasets},
    )


def validate(module: TPOModule, loader: DataLoader) -> dict[str, float]:
    """The module's validation logs over ``loader`` (teacher-forced; no progress bar)."""
    logs = _make_trainer(enable_progress_bar=False).validate(module, dataloaders=loader, verbose=False)[0]
    return {key: float(value) for key, value in logs.items()}


def fit_run(module: TPOModule, data: MultiTaskDataModule, run: RunConfig, progress: bool
            ) -> tuple[LossHistory, int]:
    """Train for ``run.minutes`` of wall clock; returns the loss history and the steps taken."""
    from tpo.query import QueryWordsFade

    history = LossHistory()
    fade = [] if run.scaffold_seconds is None else [QueryWordsFade(seconds=run.scaffold_seconds)]
    trainer = _make_trainer(
        max_time={"seconds": int(run.minutes * 60)},
        callbacks=[history, *fade, *([progress_bar_callback()] if progress else [])],
        log_every_n_steps=10,
        enable_progress_bar=progress,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=data.train_dataloader(), val_dataloaders=data.val_dataloader())
    return history, trainer.global_step


def train_run(run: RunConfig, data_root: Path, *, progress: bool = True, chance: bool = False,
              report: Callable[[str], None] = print) -> TrainedRun:
    """Build, train and evaluate one run on the synthetic data at ``data_root``.

    The loaders are given to the trainer directly rather than as a data module: the data module's
    start-up check wants a head for every task's samples, and a textual run has none.

    Args:
        run: what to train.
        data_root: a folder written by :func:`~tpo.datamodules.make_synthetic_dataset`.
        progress: progress bars (lines outside a terminal) while training.
        chance: also evaluate the untrained module first (the chance levels).
        report: receives one line before training and one after it.
    """
    torch.manual_seed(run.seed)
    module = make_module(run)
    data = make_data_module(run, data_root, module.backbone)
    untrained = validate(module, data.val_dataloader()) if chance else None
    done = "untrained model evaluated (chance levels); " if chance else ""
    report(f"{done}training for {run.minutes:g} min")
    history, steps = fit_run(module, data, run, progress)
    report(f"trained {steps} steps; evaluating on the held-out split")
    return TrainedRun(run, module, data, history, steps, validate(module, data.val_dataloader()), untrained)


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
    from tpo.datamodules import make_synthetic_dataset

    data_root = out / "data"
    start = time.time()
    if not (data_root / "synthetic.json").exists():
        make_synthetic_dataset(data_root, n_videos=n_videos, seed=seed, **DEMO_DATA)
    print(f"[1/5] synthetic dataset ({time.time() - start:.0f} s)", flush=True)

    run = RunConfig(seed=seed, minutes=minutes, batch_size=batch_size, modality_adaptive=modality_adaptive)
    trained = train_run(run, data_root, progress=progress, chance=True, report=_stage_lines(first=2, total=5))
    metrics = _headline_rows(trained)
    _draw(out, trained.module, trained.data, trained.history)
    print("[4/5] saving the model as model/; the predictor answers the held-out questions")
    _predictor_rows(trained.module, out, data_root, metrics, progress)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print("[5/5] held-out metrics (chance = the untrained model):")
    print(_table(metrics))
    print(f"({(time.time() - start) / 60:.1f} min in all)")
    return metrics


def _stage_lines(first: int, total: int) -> Callable[[str], None]:
    """A ``report`` for :func:`train_run` that numbers its lines ``[first/total]``, ``[first+1/total]``..."""
    stage = iter(range(first, total + 1))

    def report(line: str) -> None:
        print(f"[{next(stage)}/{total}] {line}", flush=True)

    return report


def _headline_rows(trained: TrainedRun) -> dict[str, dict]:
    """The demo's table: ``{task: {name: {"value", "chance"}}}`` of :data:`HEADLINE_METRICS`
    (teacher-forced and ``(generated)``) and the training language loss, first -> last step."""
    final, chance = trained.final, trained.chance or {}
    metrics: dict[str, dict] = {}
    for task, key, name in HEADLINE_METRICS:
        if key in final:
            metrics.setdefault(task, {})[name] = {"value": final[key], "chance": chance.get(key, 0.0)}
            generated = key.replace("val/", "val_generated/")
            if generated in final:
                metrics[task][f"{name} (generated)"] = {
                    "value": final[generated],
                    "chance": chance.get(generated, 0.0),
                }
    lm_loss = trained.history.history.get("lm_loss", [(0, float("nan"))])
    metrics.setdefault("language", {})["train loss first→last"] = {"value": lm_loss[-1][1],
                                                                   "chance": lm_loss[0][1]}
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

"""``tpo ablate``: the TPO paper's ablations on the embedded (synthetic) data.

Every run trains the demo's model (:data:`~tpo.demo.DEMO_MODEL`) for the same minutes on the same
data (``DIR/data``, written once) and is scored on the held-out split. The variants:

- ``tpo``: a head per task of ``--tasks``, co-trained with the conversation data; the query words
  scaffold the first 40 % of the budget and are then removed (:class:`~tpo.query.QueryWordsFade`),
  so the model scored is the paper's (heads on the task embeddings and visual features only);
- ``textual``: no heads; the LLM writes timestamps and boxes as text
  (:meth:`~tpo.tasks.Task.textual_answer`), scored by parsing its generated answers
  (:meth:`~tpo.tasks.Task.parse_textual_answer`) with the same metrics. Tasks without a textual
  form (masks) are neither trained nor scored; the table says so;
- ``single:<task>``: that task's head alone, with the conversation data, so that ``single:<task>``
  against ``tpo`` isolates the other tasks and the conversation loss stays comparable (the
  conversation data is what ``no_conversation`` takes away);
- ``no_conversation``: ``tpo`` without the conversation data;
- ``query_words``: ``tpo`` with the query-word side channel kept throughout (``TPOModule(query_words=True)``);
- ``no_scaffold``: ``tpo`` without the scaffold (the heads never see the query words).

Each row of the results has a ``mode``: ``teacher-forced`` (the heads on the teacher-forced task
tokens, as the demo's validation metrics) or ``generated`` (the model answers each held-out question
by generation, as a :class:`~tpo.Predictor` user asks it; for heads the head's prediction where the
model called the task, for ``textual`` the parsed text; ``answered`` is the fraction of questions
answered so). Every variant also gets the held-out language loss on the conversations
(``conversation`` / ``LM loss``, teacher-forced), so ``tpo`` against ``no_conversation`` shows
whether co-training the heads harms chat.

Outputs: ``DIR/runs/<variant>/seed<k>/metrics.json`` as each run finishes (``:`` in a variant's
name is ``-`` in its folder name); a rerun with the same ``--out`` skips the runs whose file exists
and refuses one made with another configuration. Then ``DIR/ablation.json``
(``{"budget_minutes", "seeds", "rows": [{"variant", "task", "metric", "mode", "values", "mean",
"std"}], ...}``), the table ``DIR/ablation.md`` and the bar chart ``DIR/ablation.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from tpo.answer import Answer, make_answer
from tpo.datamodules.synthetic import CONVERSATION
from tpo.demo import DEMO_DATA, HEADLINE_METRICS, RunConfig, TrainedRun, module_config, train_run, validate
from tpo.io import write_text_atomic
from tpo.predict import Predictor, evaluate_predictor
from tpo.progress import progress
from tpo.tasks import BUILTIN_TASKS, get_task

if TYPE_CHECKING:
    from tpo.module import TPOModule

__all__ = ["BASE_VARIANTS", "TextualPredictor", "ablate", "ablate_main", "markdown_table", "parse_tasks",
           "parse_variants", "plot_ablation", "summarise", "variant_run"]

#: The variants besides ``single:<task>``, with what each trains.
BASE_VARIANTS: dict[str, str] = {
    "tpo": "heads for all tasks, co-trained with the conversation data",
    "textual": "no heads: the LLM writes timestamps and boxes as text, parsed and scored",
    "no_conversation": "heads for all tasks, no conversation data",
    "query_words": "tpo with the query-word side channel (TPOModule(query_words=True))",
    "no_scaffold": "tpo without the query-word scaffold of the first 40 % of the budget",
}
SINGLE = "single:"
SINGLE_DESCRIPTION = "one head alone, with the conversation data"
#: How each base variant differs from ``tpo`` (:class:`~tpo.demo.RunConfig` fields).
VARIANT_CHANGES: dict[str, dict[str, Any]] = {
    "tpo": {},
    "textual": {"textual": True},
    "no_conversation": {"conversation": False},
    "query_words": {"query_words": True, "query_words_fade": None},
    "no_scaffold": {"query_words_fade": None},
}
TEACHER, GENERATED = "teacher-forced", "generated"
LM_LOSS = "LM loss"
ANSWERED = "answered"
#: Training answers whose token count sets the generation length of a textual answer.
BUDGET_SAMPLES = 32


# ---------------------------------------------------------------------------------------- choices
def parse_tasks(text: str | None) -> tuple[str, ...]:
    """``--tasks``: comma-separated built-in tasks (default all), in the order given."""
    if text is None:
        return BUILTIN_TASKS
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in tasks if t not in BUILTIN_TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks {text!r}: unknown {unknown or 'none given'}; expected a comma-separated "
                         f"list of {', '.join(BUILTIN_TASKS)} (the synthetic data's tasks)")
    if len(set(tasks)) < len(tasks):
        raise ValueError(f"--tasks {text!r}: names a task twice")
    return tasks


def default_variants(tasks: Sequence[str]) -> list[str]:
    """Every base variant, plus ``single:<task>`` per task when there are several (with one task,
    ``single:<task>`` trains what ``tpo`` trains)."""
    singles = [f"{SINGLE}{t}" for t in tasks] if len(tasks) > 1 else []
    return ["tpo", "textual", *singles, "no_conversation", "query_words", "no_scaffold"]


def check_variant(variant: str, tasks: Sequence[str]) -> None:
    """A ``ValueError`` naming ``variant`` when it is unknown or cannot run on ``tasks``."""
    if variant.startswith(SINGLE):
        task = variant[len(SINGLE):]
        if task not in tasks:
            raise ValueError(f"variant {variant!r}: {task!r} is not one of --tasks {list(tasks)}")
        return
    if variant not in BASE_VARIANTS:
        raise ValueError(f"variant {variant!r}: unknown; expected {', '.join(BASE_VARIANTS)} or "
                         f"{SINGLE}<task> with a task of --tasks {list(tasks)}")
    if VARIANT_CHANGES[variant].get("textual") and not textual_tasks(tasks):
        with_text = [t for t in BUILTIN_TASKS if get_task(t).textual_form]
        raise ValueError(f"variant {variant!r}: none of --tasks {list(tasks)} has a textual form "
                         f"(tasks with one: {', '.join(with_text)})")


def parse_variants(text: str | None, tasks: Sequence[str]) -> list[str]:
    """``--variants``: comma-separated variants (default :func:`default_variants`), each checked."""
    if text is None:
        return default_variants(tasks)
    variants = [v.strip() for v in text.split(",") if v.strip()]
    if not variants:
        raise ValueError(f"--variants {text!r}: no variant given")
    if len(set(variants)) < len(variants):
        raise ValueError(f"--variants {text!r}: names a variant twice")
    for variant in variants:
        check_variant(variant, tasks)
    return variants


def textual_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """The tasks whose answers can be written as text (:attr:`~tpo.tasks.Task.textual_form`)."""
    return tuple(t for t in tasks if get_task(t).textual_form)


def variant_run(variant: str, tasks: Sequence[str], *, seed: int, minutes: float, batch_size: int
                ) -> RunConfig:
    """The :class:`~tpo.demo.RunConfig` of one (checked) variant on ``tasks``."""
    base = RunConfig(tasks=tuple(tasks), query_words=False, seed=seed, minutes=minutes,
                     batch_size=batch_size)
    if variant.startswith(SINGLE):
        return replace(base, tasks=(variant[len(SINGLE):],))
    changes = dict(VARIANT_CHANGES[variant])
    if changes.get("textual"):
        changes["tasks"] = textual_tasks(tasks)
    return replace(base, **changes)


def skipped_tasks(run: RunConfig, tasks: Sequence[str]) -> list[dict[str, str]]:
    """The tasks of ``tasks`` a textual run leaves out, each with the reason."""
    if not run.textual:
        return []
    return [{"task": t, "reason": "no textual form (Task.textual_form): not trained or scored"}
            for t in tasks if t not in run.tasks]


def variant_description(variant: str) -> str:
    """What a variant trains, for the table's legend."""
    return SINGLE_DESCRIPTION if variant.startswith(SINGLE) else BASE_VARIANTS[variant]


# ---------------------------------------------------------------------------------------- data, runs
def ensure_data(out: Path, n_videos: int) -> Path:
    """``out/data``: the synthetic dataset of every run (the demo's clips, seed 0), written once into
    ``out/.data.partial`` and renamed when complete; one an earlier ablation wrote is reused when it
    holds ``n_videos`` clips."""
    from tpo.datamodules import make_synthetic_dataset
    from tpo.datamodules.synthetic import SyntheticDataset

    root = out / "data"
    if (root / "synthetic.json").is_file():
        count = sum(len(clips) for clips in SyntheticDataset.load(root).clips.values())
        if count != n_videos:
            raise ValueError(f"{root}: holds {count} clips but --videos is {n_videos}; give the same "
                             "--videos as the earlier ablation there, or another --out")
        return root
    if root.exists():
        raise ValueError(f"{root}: exists but holds no synthetic.json; expected the dataset of an earlier "
                         "ablation or nothing")
    partial = out / ".data.partial"
    shutil.rmtree(partial, ignore_errors=True)
    print(f"writing {n_videos} synthetic clips to {root}, once for every run", flush=True)
    make_synthetic_dataset(partial, n_videos=n_videos, seed=0, **DEMO_DATA)
    os.replace(partial, root)
    return root


def run_dir(out: Path, variant: str, seed: int) -> Path:
    """``out/runs/<variant>/seed<k>`` (``:`` in the name becomes ``-``)."""
    return out / "runs" / variant.replace(":", "-") / f"seed{seed}"


def run_signature(variant: str, run: RunConfig, n_videos: int) -> dict[str, Any]:
    """What a finished run must match to be reused: variant, run, model and data size (as JSON)."""
    signature = {"variant": variant, "run": asdict(run), "model": module_config(run), "videos": n_videos}
    return json.loads(json.dumps(signature))


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for each (nested, dotted) key whose value differs."""
    out = []
    for key in sorted({*old, *new}):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            out += differences(before, after, f"{prefix}{key}.")
        elif before != after:
            out.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return out


def load_finished(path: Path, signature: dict[str, Any]) -> dict | None:
    """The record of a finished run at ``path``, ``None`` when there is none.

    Raises:
        ValueError: the run there was made with another configuration (the message names what
            differs).
    """
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    changed = differences(record.get("signature") or {}, signature)
    if changed:
        raise ValueError(f"{path}: a finished run made with another configuration ({'; '.join(changed)}); "
                         f"use another --out, or delete {path.parent} to run it again")
    return record


def row(task: str, metric: str, mode: str, value: float) -> dict[str, Any]:
    """One result of a run (``value`` in the metric's units; ``None`` when not finite)."""
    return {"task": task, "metric": metric, "mode": mode, "value": finite_or_none(value)}


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, ``None`` when it is NaN or infinite (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def headline_names(task: str) -> list[tuple[str, str]]:
    """``(key in the validation logs, name in the table)`` of a task's :data:`HEADLINE_METRICS`."""
    return [(key, name) for t, key, name in HEADLINE_METRICS if t == task]


def teacher_forced_rows(trained: TrainedRun) -> list[dict]:
    """The heads' teacher-forced held-out metrics (none for a textual run)."""
    return [row(task, name, TEACHER, trained.final[key])
            for task in trained.run.tasks for key, name in headline_names(task) if key in trained.final]


class TextualPredictor(Predictor):
    """A :class:`~tpo.Predictor` for a model trained on textual answers: the text generated for
    each question is read back as the prediction of the task the question asks
    (:meth:`~tpo.tasks.Task.parse_textual_answer`), so :func:`~tpo.predict.evaluate_predictor`
    scores it as it scores heads; text that does not parse is a miss."""

    def predict_items(self, items: Sequence[dict], **generate_kwargs) -> list[Answer]:
        answers = super().predict_items(items, **generate_kwargs)
        return [read_textual_answer(item, answer) for item, answer in zip(items, answers, strict=True)]


def read_textual_answer(item: dict, answer: Answer) -> Answer:
    """``answer`` with the prediction its text stands for, for the task ``item`` asks (``task``
    ``None`` when the text holds none)."""
    task = get_task(item["task"])
    prediction = task.parse_textual_answer(answer.text, item["meta"])
    return make_answer(answer.text, None if prediction is None else task.name, prediction, answer.timestamps)


def answer_token_budget(tokenizer: Any, data_root: Path, task: str) -> int:
    """Generation length for ``task``'s textual answers: 1.25 times the longest of the first
    :data:`BUDGET_SAMPLES` training answers, in tokens, plus 2 (end of sequence and slack)."""
    from tpo.datamodules.multitask import synthetic_task_dataset
    from tpo.datamodules.synthetic import SyntheticDataset

    dataset = synthetic_task_dataset(SyntheticDataset.load(data_root), task, "train", sampling="uniform",
                                     num_frames=DEMO_DATA["num_frames"], textual=True)
    answers = [dataset[i]["turns"][-1][1] for i in range(min(BUDGET_SAMPLES, len(dataset)))]
    longest = max(len(tokenizer(a, add_special_tokens=False).input_ids) for a in answers)
    return int(1.25 * longest) + 2


def generated_scores(trained: TrainedRun, data_root: Path, show: bool) -> dict[str, dict[str, float]]:
    """:func:`~tpo.predict.evaluate_predictor` on the held-out split: the heads' predictions where
    the model called the task, or its parsed text (textual runs, each task with its own length)."""
    module, tasks, frames = trained.module, trained.run.tasks, DEMO_DATA["num_frames"]
    if not trained.run.textual:
        return evaluate_predictor(Predictor(module, num_frames=frames), data_root, "val", tasks=tasks,
                                  progress=show)
    scores = {}
    for task in tasks:
        length = answer_token_budget(module.backbone.tokenizer, data_root, task)
        predictor = TextualPredictor(module, num_frames=frames, max_new_tokens=length)
        scores[task] = evaluate_predictor(predictor, data_root, "val", tasks=[task], progress=show)[task]
    return scores


def generated_rows(scores: dict[str, dict[str, float]]) -> list[dict]:
    """Rows of :func:`generated_scores`: each headline metric and the fraction answered."""
    rows = []
    for task, values in scores.items():
        rows += [row(task, name, GENERATED, values[key.rsplit("/", 1)[-1]])
                 for key, name in headline_names(task)]
        rows.append(row(task, ANSWERED, GENERATED, values["assign_acc"]))
    return rows


def conversation_loss(module: TPOModule, data_root: Path, batch_size: int) -> float:
    """The held-out language loss on the validation conversations (teacher-forced; per answer token,
    averaged over batches weighted by their sizes)."""
    from torch.utils.data import DataLoader

    from tpo.datamodules.collate import TaskCollator
    from tpo.datamodules.multitask import synthetic_task_dataset
    from tpo.datamodules.synthetic import SyntheticDataset

    dataset = synthetic_task_dataset(SyntheticDataset.load(data_root), CONVERSATION, "val",
                                     num_frames=DEMO_DATA["num_frames"], sampling="uniform")
    collator = TaskCollator.from_backbone(module.backbone)
    return validate(module, DataLoader(dataset, batch_size=batch_size, collate_fn=collator))["val/lm_loss"]


def execute_run(variant: str, run: RunConfig, data_root: Path, show: bool) -> dict:
    """Train and score one run: ``{"steps", "rows": [{"task", "metric", "mode", "value"}]}``."""
    def report(line: str) -> None:
        print(f"[{variant} seed {run.seed}] {line}", flush=True)

    trained = train_run(run, data_root, progress=show, report=report)
    report("answering the held-out questions by generation")
    rows = teacher_forced_rows(trained) + generated_rows(generated_scores(trained, data_root, show))
    chat = conversation_loss(trained.module, data_root, run.batch_size)
    rows.append(row(CONVERSATION, LM_LOSS, TEACHER, chat))
    return {"steps": trained.steps, "rows": rows}


def finished_or_run(out: Path, variant: str, run: RunConfig, data_root: Path, n_videos: int,
                    show: bool) -> dict:
    """The run's record: the one in its folder when it has finished, else trained, scored and written
    there (atomically) now."""
    path = run_dir(out, variant, run.seed) / "metrics.json"
    signature = run_signature(variant, run, n_videos)
    record = load_finished(path, signature)
    if record is not None:
        print(f"[{variant} seed {run.seed}] finished earlier: {path}", flush=True)
        return record
    record = {"signature": signature, "variant": variant, "seed": run.seed,
              **execute_run(variant, run, data_root, show)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2))
    return record


# ---------------------------------------------------------------------------------------- results
def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``n - 1``; 0 for one value) of the values that are not
    ``None``; ``(None, None)`` when all are."""
    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    if not len(kept):
        return None, None
    return float(kept.mean()), float(kept.std(ddof=1)) if len(kept) > 1 else 0.0


def first_seen(keys: Sequence[tuple[str, ...]], field: int) -> dict[str, int]:
    """``{value: rank}`` of ``keys``' values at ``field``, ranked by first appearance."""
    return {value: rank for rank, value in enumerate(dict.fromkeys(key[field] for key in keys))}


def summarise(records: Sequence[dict], *, minutes: float, seeds: Sequence[int], tasks: Sequence[str],
              n_videos: int, skipped: Sequence[dict]) -> dict:
    """``ablation.json``: one row per (variant, task, metric, mode) with a value per seed (in the
    order of ``seeds``; ``None`` where a seed has none), their mean and standard deviation; rows
    ordered by task, metric, variant, mode (each by first appearance in ``records``); and the
    optimizer steps each run took in its minutes (``steps``: ``{variant: [per seed]}``)."""
    values: dict[tuple[str, str, str, str], dict[int, float | None]] = {}
    for record in records:
        for r in record["rows"]:
            key = (record["variant"], r["task"], r["metric"], r["mode"])
            values.setdefault(key, {})[record["seed"]] = r["value"]
    ranks = [first_seen(list(values), field) for field in range(4)]
    order = sorted(values, key=lambda k: tuple(ranks[f][k[f]] for f in (1, 2, 0, 3)))
    rows = []
    for key in order:
        per_seed = [values[key].get(seed) for seed in seeds]
        mean, std = mean_std(per_seed)
        rows.append({**dict(zip(("variant", "task", "metric", "mode"), key, strict=True)), "values": per_seed,
                     "mean": mean, "std": std})
    variants = dict.fromkeys(r["variant"] for r in records)
    steps = {v: [next((r.get("steps") for r in records if r["variant"] == v and r["seed"] == seed), None)
                 for seed in seeds] for v in variants}
    return {"budget_minutes": minutes, "seeds": list(seeds), "tasks": list(tasks), "videos": n_videos,
            "variants": {v: variant_description(v) for v in variants}, "steps": steps, "rows": rows,
            "skipped": list(skipped)}


def number(value: float | None) -> str:
    """A value in the Markdown table: three decimals, ``n/a`` for ``None``."""
    return "n/a" if value is None else f"{value:.3f}"


def markdown_table(summary: dict) -> str:
    """``ablation.md``: the budget, the rows (mean, std, per seed) and the skipped tasks, then what
    the variants and modes are."""
    lines = [
        "# Ablations on the synthetic data",
        "",
        f"{summary['budget_minutes']:g} min of training per run, seeds {summary['seeds']}, the same "
        f"{summary['videos']} synthetic clips for every run; tasks {', '.join(summary['tasks'])}. "
        "Optimizer steps per run (seed order): "
        + "; ".join(f"{v} {', '.join(map(str, n))}" for v, n in summary["steps"].items()) + ".",
        "",
        "| task | metric | variant | mode | mean | std | per seed |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for r in summary["rows"]:
        seeds = ", ".join(number(v) for v in r["values"])
        lines.append(f"| {r['task']} | {r['metric']} | {r['variant']} | {r['mode']} | {number(r['mean'])} | "
                     f"{number(r['std'])} | {seeds} |")
    for s in summary["skipped"]:
        lines.append(f"| {s['task']} | - | {s['variant']} | - | skipped | | {s['reason']} |")
    lines += ["", "Variants:", ""]
    lines += [f"- `{name}`: {description}" for name, description in summary["variants"].items()]
    lines += ["", f"Modes: `{TEACHER}` = the heads on the teacher-forced task tokens; `{GENERATED}` = the "
              "model answers each held-out question by generation (heads: where it called the task; "
              f"textual: its parsed text); `{ANSWERED}` = the fraction of questions answered so. "
              f"`{CONVERSATION}` / `{LM_LOSS}` = the held-out language loss on the conversations.", ""]
    return "\n".join(lines)


def plot_ablation(summary: dict, path: Path) -> Figure:
    """``ablation.png``: one panel per (task, metric), a bar per (variant, mode) at its mean with
    the standard deviation as error bar. Returns the figure (already saved)."""
    panels: dict[tuple[str, str], list[dict]] = {}
    for r in summary["rows"]:
        panels.setdefault((r["task"], r["metric"]), []).append(r)
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    colours = {variant: f"C{i % 10}" for i, variant in enumerate(summary["variants"])}
    for ax, ((task, metric), bars) in zip(axes, panels.items(), strict=False):
        draw_panel(ax, f"{task}: {metric}", bars, colours)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def draw_panel(ax: Any, title: str, bars: Sequence[dict], colours: dict[str, str]) -> None:
    """Bars of one metric, coloured by variant, teacher-forced ones hatched; a missing mean is
    drawn at 0. The value axis starts at 0 and reaches at least 1 (fractions share one scale)."""
    means = [r["mean"] or 0.0 for r in bars]
    errors = [r["std"] or 0.0 for r in bars]
    drawn = ax.bar(range(len(bars)), means, yerr=errors, capsize=3, edgecolor="black", linewidth=0.5,
                   color=[colours[r["variant"]] for r in bars],
                   hatch=["//" if r["mode"] == TEACHER else "" for r in bars])
    ax.bar_label(drawn, labels=[number(r["mean"]) for r in bars], fontsize=6)
    ax.set_xticks(range(len(bars)), [f"{r['variant']}\n{r['mode']}" for r in bars], fontsize=7, rotation=30,
                  ha="right")
    ax.set_ylim(0, 1.1 * max(1.0, *(m + e for m, e in zip(means, errors, strict=True))))
    ax.set_title(title, fontsize=9)


def write_outputs(out: Path, summary: dict) -> None:
    """``ablation.json``, ``ablation.md`` and ``ablation.png`` in ``out``."""
    write_text_atomic(out / "ablation.json", json.dumps(summary, indent=2))
    write_text_atomic(out / "ablation.md", markdown_table(summary))
    plot_ablation(summary, out / "ablation.png")


# ---------------------------------------------------------------------------------------- command
def make_plan(variants: Sequence[str], tasks: Sequence[str], *, seeds: int, minutes: float,
              batch_size: int) -> list[tuple[str, RunConfig]]:
    """``(variant, run)`` for every variant and seed ``0 .. seeds - 1``, each checked."""
    if seeds < 1:
        raise ValueError(f"--seeds: expected at least 1, got {seeds}")
    for variant in variants:
        check_variant(variant, tasks)
    return [(v, variant_run(v, tasks, seed=s, minutes=minutes, batch_size=batch_size))
            for v in variants for s in range(seeds)]


def ablate(out: Path, *, variants: Sequence[str], tasks: Sequence[str], minutes: float, seeds: int,
           n_videos: int = 300, batch_size: int = 16, show_progress: bool = True) -> dict:
    """Run (or resume) every (variant, seed) and write the results (see the module docstring).

    Args:
        out: output folder.
        variants: variant names (:func:`parse_variants`).
        tasks: the tasks trained and scored (:func:`parse_tasks`).
        minutes: training time per run (wall clock).
        seeds: runs per variant, seeds ``0 .. seeds - 1`` (the training seed; the data is the same).
        n_videos: synthetic clips written to ``out/data``.
        batch_size: samples per batch.
        show_progress: progress bars (lines outside a terminal) while training and generating.

    Returns:
        the summary written to ``out/ablation.json``.
    """
    plan = make_plan(variants, tasks, seeds=seeds, minutes=minutes, batch_size=batch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = ensure_data(out, n_videos)
    bar = progress(len(plan), "ablate", unit="run")
    records = []
    for variant, run in plan:
        records.append(finished_or_run(out, variant, run, data_root, n_videos, show_progress))
        bar.update(1)
    bar.close()
    skipped = [{"variant": v, **s} for v, run in plan if run.seed == 0 for s in skipped_tasks(run, tasks)]
    summary = summarise(records, minutes=minutes, seeds=range(seeds), tasks=tasks, n_videos=n_videos,
                        skipped=skipped)
    write_outputs(out, summary)
    return summary


def ablate_main(argv: list[str] | None = None) -> int:
    """``tpo ablate --out DIR [--variants ...] [--tasks ...] [--minutes M] [--seeds N]``."""
    parser = argparse.ArgumentParser(
        prog="tpo ablate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (a rerun resumes it)")
    parser.add_argument("--variants", help="comma-separated: tpo, textual, single:<task>, no_conversation, "
                        "query_words, no_scaffold (default all; single:<task> per task when --tasks has "
                        "several)")
    parser.add_argument("--tasks", help="comma-separated tasks trained and scored (default "
                        f"{','.join(BUILTIN_TASKS)})")
    parser.add_argument("--minutes", type=float, default=4.0, help="training time per run")
    parser.add_argument("--seeds", type=int, default=1, help="runs per variant (seeds 0..N-1)")
    parser.add_argument("--videos", type=int, default=300, help="synthetic clips to write")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out}: is a file, expected a folder (new or an earlier ablation's)")
        tasks = parse_tasks(args.tasks)
        variants = parse_variants(args.variants, tasks)
        make_plan(variants, tasks, seeds=args.seeds, minutes=args.minutes, batch_size=args.batch_size)
    except ValueError as err:
        parser.error(str(err))
    summary = ablate(args.out, variants=variants, tasks=tasks, minutes=args.minutes, seeds=args.seeds,
                     n_videos=args.videos, batch_size=args.batch_size, show_progress=not args.no_progress)
    print(markdown_table(summary))
    print(f"wrote {args.out / 'ablation.json'}, ablation.md and ablation.png")
    return 0

"""What TPO costs on backbones of real width: LLaVA-OneVision-0.5B and Qwen2.5-VL-3B, made shallow.

Each backbone is built from configs with random weights (no download) at its real model's widths
— LLaVA-OneVision-0.5B: Qwen2-0.5B text (hidden 896, 14 heads, 2 KV heads, intermediate 4864,
vocabulary 151,646, tied embeddings) and SigLIP so400m vision (hidden 1152, 16 heads, intermediate
4304, patch 14, 384² input); Qwen2.5-VL-3B: text hidden 2048, 16 heads, 2 KV heads, intermediate
11008, vocabulary 151,936, tied embeddings, and its vision tower (hidden 1280, 16 heads,
intermediate 3420, patch 14, spatial merge 2, temporal patch 2, 112-pixel windows, out 2048; its
processor's budget of 128..768 merged tokens a frame turns a 384² frame into 392², 196 tokens per
two-frame step) — but with few layers (``--layers`` text, ``--vision-layers`` vision), so that a
step runs on a CPU. The tokenizers are the tiny ones of :mod:`tpo.backbones.tiny` and
:mod:`tpo.backbones.tiny_qwen_vl` (a few hundred ids) while the models keep the full vocabulary, so
the embedding table and the LM head cost what they cost in the real models. LoRA
(``apply_lora``'s defaults: rank 16 on the seven projections of every LLM layer, the task-token
rows of the embedding and LM head trainable through PEFT's trainable tokens) is on throughout.

The batch is what the real collator (``TaskCollator.from_backbone``) makes of four items, one per
task (temporal, box, track, mask), each a ``--frames``-frame ``--size``² clip of a moving red
square with its targets. Gradient checkpointing is transformers' ``activation_checkpointing_enable``
on the LLM (tpo has no switch of its own), off and on (``--checkpointing``). Figures, per backbone
and, for the first two, per checkpointing setting:

- ``scale_step_ratio``: one stage-2 training step of ``TPOModule(stage="stage2", lora=...)``
  (``training_losses``: LM loss + the four default heads, task embeddings trained) over the LM-only
  step: the same backbone and LoRA, the wrapped Hugging Face model's own forward on the same batch,
  LM loss alone. Both are forward + backward + AdamW step (the stage's parameter groups for TPO,
  the backbone's trainable parameters for LM), interleaved, the fastest of ``--repeats`` (after
  ``--warmup`` untimed rounds); the ratio of medians is printed beside it. Time is this process's
  CPU time (``--clock cpu``, one thread by default): on a machine shared with other jobs, wall time
  (``--clock wall``) swings by tens of percent from one step to the next.
- ``scale_peak_memory_ratio``: peak RSS of one TPO step over that of one LM-only step, each in its
  own child process forked from this one before it has built any model (so each starts as a fresh
  interpreter with the libraries imported), which builds the backbone (with the heads for TPO),
  runs one step and reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, minus nothing: the
  libraries, weights, optimizer state and activations all count. Both children fix glibc's mmap
  threshold at 1 MiB (``mallopt``), so a freed tensor goes back to the system at once and the peak
  follows the live tensors rather than what the heap happens to keep (with glibc's sliding
  threshold the same child's peak moves by about 200 MB from run to run, 4% here).
- ``scale_trainable_params``: the parameters the TPO step trains (LoRA, task-token rows, task
  embeddings, heads); ``scale_heads_export_mb``: the size on disk of ``TPOModule.save_heads``;
  ``scale_heads_export_vocab_tables``: tensors of that export with a vocabulary-sized dimension
  (there should be none: the export carries the task-token rows, not the tables).
- ``predict_latency_ratio``: ``Predictor.predict`` on one question about an H.264 mp4 (written
  with PyAV) over the model's own pipeline for the same answer: the same frames decoded with
  decord, the processor on the same prompt text (checked to give the same prompt ids), ``generate``
  greedy with the same suppressed and stop tokens and the same number of new tokens (checked to
  give the same tokens). With random weights the model answers in text, so both end the answer with
  the temporal task-begin token (``forced_eos_token_id``): the Predictor then runs its task step and
  the temporal head, as for a real task call. The fastest of ``--repeats``, interleaved.

    python benchmarks/scale.py [--backbone llava_onevision|qwen2_5_vl|all] [--layers 2]
        [--vision-layers 2] [--frames 2] [--size 384] [--repeats 3] [--warmup 0] [--threads 1]
        [--clock cpu|wall] [--checkpointing off|on|both] [--new-tokens 8]

``--tiny`` swaps in tiny widths (the smoke test runs ``--tiny --repeats 1 --new-tokens 3``; its
figures say nothing). At the real widths a step takes tens of CPU seconds, mostly in the vision
tower and the 150k-row LM head, and the whole run about half an hour. The shallow depth makes the
ratios pessimistic: the heads' cost is set against a fraction of the real models' layers.

Prints each figure per backbone and setting as ``<name>_<backbone>[_ckpt_off|_ckpt_on]: X (target
...)``, then the headlines ``<name>: X (target ...)``: each the worst (largest) of its lines above,
over the backbones and checkpointing settings run.
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import decord
import numpy as np
import torch
from safetensors import safe_open
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    SiglipVisionConfig,
)

from tpo.backbones import Backbone, LlavaBackbone, QwenVLBackbone
from tpo.backbones.lora import apply_lora
from tpo.backbones.tiny import train_tiny_tokenizer
from tpo.backbones.tiny_qwen_vl import QWEN2_VL_CHAT_TEMPLATE, train_qwen_tokenizer
from tpo.datamodules import TaskCollator
from tpo.datamodules.prompts import make_prompt
from tpo.datamodules.synthetic import write_h264
from tpo.datamodules.video import sample_indices
from tpo.export import HEADS_WEIGHTS
from tpo.generation import generate_with_tasks, special_input_ids
from tpo.module import TPOModule
from tpo.predict import Predictor
from tpo.tokens import TaskTokens

BACKBONES = ("llava_onevision", "qwen2_5_vl")
TASKS = ("temporal", "box", "track", "mask")
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}  # apply_lora's defaults, all seven projections
FPS = 4.0
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


@dataclass(frozen=True)
class Widths:
    """The widths of one backbone: its LLM (``hidden``...) and its vision tower (``vision_*``)."""

    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    patch: int
    image: int


REAL = {
    "llava_onevision": Widths(896, 14, 2, 4864, 151_646, 1152, 16, 4304, 14, 384),
    "qwen2_5_vl": Widths(2048, 16, 2, 11008, 151_936, 1280, 16, 3420, 14, 384),
}
TINY = dict.fromkeys(BACKBONES, Widths(64, 4, 2, 128, 4096, 32, 4, 64, 8, 32))


# ---------------------------------------------------------------------------- backbones
def llava_onevision(widths: Widths, layers: int, vision_layers: int) -> LlavaBackbone:
    """LLaVA-OneVision (SigLIP + Qwen2) at ``widths``, random weights, the tiny tokenizer."""
    tokenizer = train_tiny_tokenizer()
    text = Qwen2Config(
        vocab_size=widths.vocab, hidden_size=widths.hidden, intermediate_size=widths.intermediate,
        num_hidden_layers=layers, num_attention_heads=widths.heads, num_key_value_heads=widths.kv_heads,
        max_position_embeddings=32768, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    vision = SiglipVisionConfig(
        hidden_size=widths.vision_hidden, intermediate_size=widths.vision_intermediate,
        num_hidden_layers=vision_layers, num_attention_heads=widths.vision_heads,
        image_size=widths.image, patch_size=widths.patch,
    )
    side = widths.image
    pinpoints = [[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]]
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints, vision_feature_layer=-1,
        vision_feature_select_strategy="full", tie_word_embeddings=True,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
    )
    square = {"height": side, "width": side}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=square),
        tokenizer=tokenizer, num_image_tokens=(side // widths.patch) ** 2,
        vision_feature_select_strategy="full",
    )
    model = LlavaOnevisionForConditionalGeneration(config)
    return LlavaBackbone(model, processor, task_tokens=TaskTokens(hidden_size=widths.hidden))


def qwen2_5_vl(widths: Widths, layers: int, vision_layers: int) -> QwenVLBackbone:
    """Qwen2.5-VL at ``widths``, random weights, the tiny Qwen tokenizer."""
    tokenizer = train_qwen_tokenizer()
    half = widths.hidden // widths.heads // 2  # M-RoPE splits the rotary half: 16/24/24 at head dim 128
    sections = [16, 24, 24] if half == 64 else [half // 4, half // 4, half - 2 * (half // 4)]
    text = {
        "vocab_size": widths.vocab, "hidden_size": widths.hidden, "intermediate_size": widths.intermediate,
        "num_hidden_layers": layers, "num_attention_heads": widths.heads,
        "num_key_value_heads": widths.kv_heads,
        "max_position_embeddings": 32768, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None,
        "rope_parameters": {"rope_type": "default", "mrope_section": sections, "rope_theta": 1e6},
    }
    vision = {
        "depth": vision_layers, "hidden_size": widths.vision_hidden,
        "intermediate_size": widths.vision_intermediate, "num_heads": widths.vision_heads,
        "patch_size": widths.patch, "spatial_merge_size": 2, "temporal_patch_size": 2,
        "out_hidden_size": widths.hidden, "window_size": 8 * widths.patch,  # 112 px windows
        "fullatt_block_indexes": [vision_layers - 1], "tokens_per_second": 2,
    }
    ids = {f"{name}_token_id": tokenizer.convert_tokens_to_ids(f"<|{name}|>")
           for name in ("vision_start", "vision_end")}
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True, **ids,
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )
    merged = (2 * widths.patch) ** 2  # pixels of one merged token; Qwen2.5-VL's budget: 128..768 a frame
    frame = {"shortest_edge": 128 * merged, "longest_edge": 768 * merged}
    patching = {"patch_size": widths.patch, "merge_size": 2, "temporal_patch_size": 2}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=frame, **patching),
        video_processor=Qwen2VLVideoProcessor(size=frame, do_sample_frames=False, cap_pixels_per_frame=False,
                                              **patching),
        tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    return QwenVLBackbone(model, processor, task_tokens=TaskTokens(hidden_size=widths.hidden))


BUILDERS: dict[str, Callable[[Widths, int, int], Backbone]] = {
    "llava_onevision": llava_onevision, "qwen2_5_vl": qwen2_5_vl,
}


def set_checkpointing(backbone: Backbone, on: bool) -> None:
    """Activation checkpointing of every LLM layer (transformers', non-reentrant) on or off."""
    llm = backbone.model.model.language_model
    if on:
        llm.activation_checkpointing_enable({"use_reentrant": False})
    else:
        llm.activation_checkpointing_disable()


# ---------------------------------------------------------------------------- data
def square_clip(frames: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red square moving left to right on grey: ``(T, S, S, 3)`` uint8 frames, ``(T, S, S)``
    bool masks and ``(T, 4)`` normalised cxcywh boxes."""
    side = size // 4
    video = np.full((frames, size, size, 3), 96, np.uint8)
    masks = np.zeros((frames, size, size), bool)
    boxes = np.zeros((frames, 4), np.float32)
    for t in range(frames):
        x, y = (size - side) * t // max(frames - 1, 1), size // 3
        video[t, y:y + side, x:x + side] = (220, 30, 30)
        masks[t, y:y + side, x:x + side] = True
        boxes[t] = ((x + side / 2) / size, (y + side / 2) / size, side / size, side / size)
    return video, masks, boxes


def task_items(frames: int, size: int) -> list[dict]:
    """One collator item per task, all on the same clip, with their targets."""
    video, masks, boxes = square_clip(frames, size)
    meta = {"duration": frames / FPS, "frame_size": (size, size), "timestamps": np.arange(frames) / FPS}
    saliency = (np.arange(frames) >= frames // 2).astype(np.float32)
    targets = {
        "temporal": {"spans": np.array([[0.75, 0.5]], np.float32), "saliency": saliency},
        "box": {"boxes": boxes[0]},
        "track": {"boxes": boxes, "visible": np.ones(frames, bool)},
        "mask": {"masks": masks},
    }
    items = []
    for task in TASKS:
        prompt = make_prompt(task, "the red square", template=0)
        item = {"task": task, "id": task, "video": video, "turns": [(prompt.instruction, prompt.answer)],
                "query": prompt.query, "target": targets[task], "meta": dict(meta)}
        if task == "track":
            item["prompt_boxes"] = boxes[:1]
        items.append(item)
    return items


def model_inputs(backbone: Backbone, batch: dict) -> dict:
    """The batch keys the wrapped Hugging Face model's ``forward`` takes (the processor's outputs
    and ``labels``)."""
    accepted = inspect.signature(backbone.model.forward).parameters
    return {k: v for k, v in batch.items() if k in accepted}


# ---------------------------------------------------------------------------- steps
@dataclass
class Setup:
    """A backbone with LoRA, the batch, and what one training step of each variant needs."""

    backbone: Backbone
    batch: dict
    module: TPOModule | None


def build(name: str, args: argparse.Namespace, with_heads: bool) -> Setup:
    """The backbone ``name`` with LoRA (inside a stage-2 ``TPOModule`` with the four default heads
    when ``with_heads``) and the collated four-task batch."""
    torch.manual_seed(0)
    widths = (TINY if args.tiny else REAL)[name]
    backbone = BUILDERS[name](widths, args.layers, args.vision_layers)
    module = None
    if with_heads:
        module = TPOModule(backbone=backbone, stage="stage2", lora=dict(LORA), schedule_steps=1000,
                           nonfinite=None)
    else:
        apply_lora(backbone, **LORA)
    backbone.train()
    batch = TaskCollator.from_backbone(backbone)(task_items(args.frames, args.size))
    return Setup(backbone, batch, module)


def tpo_loss(setup: Setup) -> torch.Tensor:
    return setup.module.training_losses(setup.batch)[0]


def lm_loss(setup: Setup) -> torch.Tensor:
    """The wrapped model's own LM loss on the batch (the input-box embeddings the batch's
    ``<track_box>`` token needs are put in, as in any forward of the backbone)."""
    with setup.backbone.prompt_boxes(setup.batch["prompt_boxes"]):
        return setup.backbone.model(**model_inputs(setup.backbone, setup.batch)).loss


def make_optimizer(setup: Setup, variant: str) -> torch.optim.Optimizer:
    """AdamW: the stage's parameter groups for TPO, the backbone's trainable parameters for LM."""
    if variant == "tpo":
        return setup.module.configure_optimizers()["optimizer"]
    return torch.optim.AdamW([p for p in setup.backbone.parameters() if p.requires_grad], lr=2e-5)


def timed_step(loss_fn: Callable[[Setup], torch.Tensor], setup: Setup, optimizer: torch.optim.Optimizer,
               clock: Callable[[], float] = time.process_time) -> float:
    """Seconds (of ``clock``) of one forward + backward + optimizer step."""
    start = clock()
    loss = loss_fn(setup)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return clock() - start


LOSSES = {"tpo": tpo_loss, "lm": lm_loss}


def step_times(setup: Setup, args: argparse.Namespace) -> dict[str, list[float]]:
    """``{"tpo": [s, ...], "lm": [...]}``: ``--repeats`` interleaved steps of each after ``--warmup``."""
    optimizers = {v: make_optimizer(setup, v) for v in LOSSES}
    times: dict[str, list[float]] = {v: [] for v in LOSSES}
    for round_ in range(args.warmup + args.repeats):
        for variant, loss_fn in LOSSES.items():
            seconds = timed_step(loss_fn, setup, optimizers[variant], CLOCKS[args.clock])
            if round_ >= args.warmup:
                times[variant].append(seconds)
    return times


# ---------------------------------------------------------------------------- memory
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fix_mmap_threshold(threshold: int = 1 << 20) -> None:
    """Have glibc serve every allocation of ``threshold`` bytes or more with its own mmap, returned
    to the system when freed (``mallopt(M_MMAP_THRESHOLD)``, which also stops glibc raising the
    threshold as large blocks are freed); nothing where the C library has no ``mallopt``."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, threshold)


def _peak_rss_child(conn: Connection, name: str, variant: str, checkpointing: bool,
                    args: argparse.Namespace) -> None:
    """In a forked child: build, one step of ``variant``, send ``ru_maxrss`` (KiB) or the error."""
    fix_mmap_threshold()
    try:
        setup = build(name, args, with_heads=variant == "tpo")
        set_checkpointing(setup.backbone, checkpointing)
        timed_step(LOSSES[variant], setup, make_optimizer(setup, variant))
        conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except Exception as err:  # the parent raises it, naming the measurement
        conn.send(f"{type(err).__name__}: {err}")
    finally:
        conn.close()


def peak_rss_mb(name: str, variant: str, checkpointing: bool, args: argparse.Namespace) -> float:
    """Peak RSS (MiB) of a fresh child process that builds ``name`` and runs one ``variant`` step."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_peak_rss_child, args=(child, name, variant, checkpointing, args))
    process.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:  # the child died without a word (killed, out of memory)
        result = None
    process.join()
    if not isinstance(result, int):
        raise RuntimeError(f"peak memory of {name} {variant} (checkpointing {checkpointing}): the child "
                           f"process failed (exit code {process.exitcode}): {result}")
    return result / 1024


# ---------------------------------------------------------------------------- export
def export_figures(module: TPOModule, vocab: int) -> tuple[float, int]:
    """``(size in MB, tensors with a dimension >= vocab)`` of ``module.save_heads``' output."""
    with tempfile.TemporaryDirectory() as folder:
        module.save_heads(folder)
        size = sum(f.stat().st_size for f in Path(folder).iterdir())
        with safe_open(os.path.join(folder, HEADS_WEIGHTS), "pt") as weights:
            tables = sum(max(weights.get_slice(k).get_shape(), default=0) >= vocab for k in weights.keys())
    return size / 1e6, tables


# ---------------------------------------------------------------------------- prediction
@dataclass
class Question:
    """One video question, and the ``generate`` arguments that give Predictor's answer to it."""

    path: str
    text: str
    forced: int  # the temporal task-begin token, forced last
    generate: dict


def make_question(predictor: Predictor, args: argparse.Namespace, folder: str) -> Question:
    """Write the mp4 and set the greedy answer: ``--new-tokens`` tokens, the last the temporal
    task-begin token, the tokens Predictor suppresses suppressed, its stop tokens stopping."""
    backbone, tokens = predictor.backbone, predictor.backbone.task_tokens
    video, _, _ = square_clip(2 * args.frames, args.size)
    path = os.path.join(folder, "clip.mp4")
    write_h264(path, video, FPS)
    forced = int(tokens.begin_ids[tokens.task_names.index("temporal")])
    generate = {
        "max_new_tokens": args.new_tokens, "do_sample": False, "forced_eos_token_id": forced,
        "eos_token_id": [backbone.tokenizer.eos_token_id, *tokens.begin_ids.tolist()],
        "pad_token_id": backbone.tokenizer.pad_token_id,
        "suppress_tokens": sorted({*special_input_ids(backbone), *tokens.placeholder_ids.tolist()}),
    }
    text = make_prompt("temporal", "the red square", template=0).instruction
    return Question(path, text, forced, generate)


def reference_inputs(backbone: Backbone, question: Question, frames: int) -> dict:
    """What the model's own pipeline feeds ``generate``: the frames decoded with decord (uniform
    indices, as Predictor samples them) and the processor's encoding of the prompt text."""
    reader = decord.VideoReader(question.path, ctx=decord.cpu(0), num_threads=1)
    video = reader.get_batch(list(sample_indices(len(reader), frames, "uniform"))).asnumpy()
    chat = backbone.chat_format()
    text = chat.system + chat.user + backbone.processor.video_token + "\n" + question.text + chat.assistant
    return dict(backbone.processor.processor(text=[text], videos=[video], return_tensors="pt"))


def reference_answer(backbone: Backbone, question: Question, frames: int) -> torch.Tensor:
    """Decode, process, ``generate``: the new tokens ``(1, n)``."""
    inputs = reference_inputs(backbone, question, frames)
    with torch.no_grad():
        out = backbone.model.generate(**inputs, **question.generate)
    return out[:, inputs["input_ids"].shape[1]:]


def check_same_answer(predictor: Predictor, question: Question, frames: int) -> str:
    """Whether Predictor's prompt ids and generated tokens equal the reference's (untimed)."""
    backbone = predictor.backbone
    batch = predictor.collator([predictor.make_item(question.path, question.text)])
    prompt = reference_inputs(backbone, question, frames)["input_ids"]
    ours = generate_with_tasks(backbone, batch, max_new_tokens=question.generate["max_new_tokens"],
                               forced_eos_token_id=question.forced)
    theirs = reference_answer(backbone, question, frames)
    same_prompt = torch.equal(batch["input_ids"], prompt)
    same_answer = torch.equal(ours.tokens, theirs) and bool(ours.calls.all())
    return (f"prompt ids {'equal' if same_prompt else 'DIFFER'} ({prompt.shape[1]} tokens), answers "
            f"{'equal' if same_answer else 'DIFFER'} ({theirs.shape[1]} new tokens, the last a task call)")


def predict_times(module: TPOModule, args: argparse.Namespace) -> tuple[list[float], list[float], str]:
    """``Predictor.predict`` and the reference on one mp4 question, ``--repeats`` interleaved rounds
    after ``--warmup``, and :func:`check_same_answer`'s verdict."""
    predictor = Predictor(module, num_frames=args.frames, fps=FPS, max_new_tokens=args.new_tokens)
    ours, theirs, clock = [], [], CLOCKS[args.clock]
    with tempfile.TemporaryDirectory() as folder:
        question = make_question(predictor, args, folder)
        verdict = check_same_answer(predictor, question, args.frames)
        for round_ in range(args.warmup + args.repeats):
            start = clock()
            predictor.predict(question.path, question.text, forced_eos_token_id=question.forced)
            middle = clock()
            reference_answer(predictor.backbone, question, args.frames)
            if round_ >= args.warmup:
                ours.append(middle - start)
                theirs.append(clock() - middle)
    return ours, theirs, verdict


# ---------------------------------------------------------------------------- report
HEADLINES = {  # name: (target, format)
    "scale_step_ratio": ("<= 1.10", ".3f"),
    "scale_peak_memory_ratio": ("<= 1.15", ".3f"),
    "scale_trainable_params": ("n/a", "d"),
    "scale_heads_export_mb": ("n/a", ".2f"),
    "scale_heads_export_vocab_tables": ("0", "d"),
    "predict_latency_ratio": ("<= 1.20", ".3f"),
}


class Report:
    """Prints the figures of each backbone and setting as they come; :meth:`headlines` prints the
    worst (largest) of each figure."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, name: str, suffix: str, value: float) -> None:
        target, fmt = HEADLINES[name]
        self.values.setdefault(name, []).append(value)
        print(f"{name}_{suffix}: {value:{fmt}} (target {target})", flush=True)

    def headlines(self) -> None:
        """One ``name: worst (target ...)`` line per figure, ``n/a`` for one not measured."""
        for name, (target, fmt) in HEADLINES.items():
            value = f"{max(self.values[name]):{fmt}}" if name in self.values else "n/a"
            print(f"{name}: {value} (target {target})")


def ratio(ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """Best over best, median over median."""
    return min(ours) / min(theirs), statistics.median(ours) / statistics.median(theirs)


def vocab_size(backbone: Backbone) -> int:
    """Rows of the model's embedding table (not the tokenizer's few hundred ids)."""
    return backbone.model.config.get_text_config().vocab_size


def describe(name: str, setup: Setup) -> str:
    """The backbone's size and the batch's shape, in words."""
    config = setup.backbone.model.config
    params = sum(p.numel() for p in setup.backbone.model.parameters())
    table = vocab_size(setup.backbone) * setup.backbone.hidden_size
    tied = "tied" if config.tie_word_embeddings else "untied"
    return (f"{name}: {params / 1e6:.0f}M parameters ({table / 1e6:.0f}M in the embedding table, LM head "
            f"{tied}), batch of {tuple(setup.batch['input_ids'].shape)} tokens")


def run_backbone(name: str, args: argparse.Namespace, settings: tuple[bool, ...], report: Report) -> None:
    """Timings, trainable parameters, the export and prediction of one backbone."""
    setup = build(name, args, with_heads=True)
    print(describe(name, setup), flush=True)
    for checkpointing in settings:
        set_checkpointing(setup.backbone, checkpointing)
        times = step_times(setup, args)
        tpo, lm = times["tpo"], times["lm"]
        best, median = ratio(tpo, lm)
        suffix = f"{name}_ckpt_{'on' if checkpointing else 'off'}"
        print(f"step_s_{suffix}: tpo best {min(tpo):.3f} median {statistics.median(tpo):.3f}, lm best "
              f"{min(lm):.3f} median {statistics.median(lm):.3f} (ratio of medians {median:.3f})")
        report.add("scale_step_ratio", suffix, best)
    set_checkpointing(setup.backbone, False)
    module = setup.module
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    report.add("scale_trainable_params", name, trainable)
    size, tables = export_figures(module, vocab_size(setup.backbone))
    report.add("scale_heads_export_mb", name, size)
    report.add("scale_heads_export_vocab_tables", name, tables)
    ours, theirs, verdict = predict_times(module, args)
    best, median = ratio(ours, theirs)
    print(f"predict_s_{name}: predictor best {min(ours):.3f}, generate best {min(theirs):.3f} "
          f"(ratio of medians {median:.3f}); {verdict}")
    report.add("predict_latency_ratio", name, best)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=[*BACKBONES, "all"], default="all")
    parser.add_argument("--layers", type=int, default=2, help="LLM decoder layers")
    parser.add_argument("--vision-layers", type=int, default=2, help="vision tower layers")
    parser.add_argument("--frames", type=int, default=2, help="frames per video")
    parser.add_argument("--size", type=int, help="frame side, pixels (even; default 384, --tiny 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=0, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=list(CLOCKS), default="cpu",
                        help="cpu: this process's CPU time (default); wall: elapsed time")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument("--new-tokens", type=int, default=8, help="answer length for the latency figure")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (a smoke test)")
    args = parser.parse_args()
    args.size = args.size or (32 if args.tiny else 384)
    counts = (args.layers, args.vision_layers, args.repeats, args.threads, args.new_tokens)
    if min(counts) < 1 or args.warmup < 0:
        parser.error("--layers, --vision-layers, --repeats, --threads, --new-tokens: expected positive "
                     "values and --warmup >= 0")
    if args.frames < 2 or args.size % 2 or args.size < 16:
        parser.error(f"--frames, --size: expected at least 2 frames of an even size >= 16, got "
                     f"{args.frames}, {args.size}")
    return args


def main() -> None:
    args = parse_args()
    names = BACKBONES if args.backbone == "all" else (args.backbone,)
    settings = {"off": (False,), "on": (True,), "both": (False, True)}[args.checkpointing]
    torch.set_num_threads(args.threads)
    print(f"{args.layers} text + {args.vision_layers} vision layers, {'tiny' if args.tiny else 'real'} "
          f"widths, {args.frames} frames of {args.size}², threads {torch.get_num_threads()}, {args.clock} "
          "clock", flush=True)
    report = Report()
    for name in names:  # first: each child is forked before this process builds anything
        for checkpointing in settings:
            peaks = {v: peak_rss_mb(name, v, checkpointing, args) for v in ("lm", "tpo")}
            suffix = f"{name}_ckpt_{'on' if checkpointing else 'off'}"
            print(f"peak_rss_mb_{suffix}: tpo {peaks['tpo']:.0f}, lm {peaks['lm']:.0f}")
            report.add("scale_peak_memory_ratio", suffix, peaks["tpo"] / peaks["lm"])
    for name in names:
        run_backbone(name, args, settings, report)
    report.headlines()


if __name__ == "__main__":
    main()

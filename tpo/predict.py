"""Inference: a video (or image) and a question in, text and task predictions out.

:class:`Predictor` wires the pieces together, each in its own module::

    media, question --tpo.media (MediaReader, question_item)--> collator item
    items --TaskCollator (generation=True, left padding)--> batch, as for training without answers
    batch --tpo.generation.generate_with_tasks--> tokens, task calls, task embeddings + visual
    task embeddings --module.run_heads, head.postprocess--> predictions (seconds, pixels)
    tokens, predictions --tpo.answer--> Answer
    split --tpo.evaluation.evaluate_predictor--> {task: {metric: value}}

Example::

    predictor = Predictor(module, num_frames=8)            # or Predictor.from_pretrained(folder)
    answer = predictor.predict("clip.mp4", "When is the red circle visible?")
    answer.task, answer.spans                              # "temporal", (K, 2) seconds
    predictor.predict("clip.mp4", "Follow the red circle starting from <track_box>.",
                      box=[3, 4, 12, 13]).track            # (T, 4) xywh pixels

Backbones that encode their media apart from the LLM generate here (``encode_visual``: LLaVA,
Qwen-VL, InternVL; not VideoChat, whose Q-Former tokens are part of its LLM input).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tpo.answer import Answer, answer_text, make_answer
from tpo.backbones.base import Backbone, BackboneOutput
from tpo.backbones.lora import without_adapters
from tpo.datamodules.collate import ChatFormat, TaskCollator
from tpo.evaluation import evaluate_predictor
from tpo.export import HEADS_CONFIG, HEADS_WEIGHTS
from tpo.generation import generate_with_tasks
from tpo.media import Media, MediaReader, question_item
from tpo.module import TPOModule

__all__ = ["Answer", "Predictor", "evaluate_predictor"]

PREDICTOR_CONFIG = "tpo_predictor.json"
BACKBONE_DIR, HEADS_DIR = "backbone", "heads"


class Predictor:
    """Answers questions about videos and images with a trained :class:`~tpo.TPOModule`.

    Args:
        module: the trained module (put in eval mode; predictions run without gradients). Its
            backbone must encode its media apart from the LLM (``encode_visual``: LLaVA, Qwen-VL,
            InternVL).
        num_frames: frames read from a video (path or array), sampled with ``sampling``.
        sampling: ``"uniform"`` (as the validation datasets) or ``"middle"``.
        fps: frame rate assumed for videos given as arrays (their timestamps are ``index / fps``).
        chat: the chat format the model was trained with (default: the backbone's,
            :meth:`~tpo.backbones.Backbone.chat_format`).
        max_new_tokens: generation length limit.
        backend: :class:`~tpo.datamodules.VideoReader` backend for video files.
    """

    def __init__(self, module: TPOModule, *, num_frames: int = 8, sampling: str = "uniform", fps: float = 1.0,
                 chat: ChatFormat | None = None, max_new_tokens: int = 32, backend: str = "auto") -> None:
        if not callable(getattr(module.backbone, "encode_visual", None)):
            raise ValueError(
                "module.backbone: Predictor generates with backbones that encode their media apart from "
                f"the LLM (encode_visual: LLaVA, Qwen-VL, InternVL), got {type(module.backbone).__name__}"
            )
        if module.backbone.task_tokens is None:
            raise ValueError("module.backbone: has no task tokens")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected a positive value, got {max_new_tokens}")
        self.reader = MediaReader(num_frames=num_frames, sampling=sampling, fps=fps, backend=backend)
        self.module = module.eval()
        self.chat = chat or module.backbone.chat_format()
        self.max_new_tokens = max_new_tokens
        self.collator = TaskCollator.from_backbone(module.backbone, chat=self.chat, generation=True,
                                                   padding_side="left")
        self.forced_collator = TaskCollator.from_backbone(module.backbone, chat=self.chat)

    @property
    def num_frames(self) -> int:
        return self.reader.num_frames

    @property
    def sampling(self) -> str:
        return self.reader.sampling

    @property
    def fps(self) -> float:
        return self.reader.fps

    @property
    def backend(self) -> str:
        return self.reader.backend

    @property
    def backbone(self) -> Backbone:
        return self.module.backbone

    @property
    def device(self) -> torch.device:
        return self.module.device

    # ------------------------------------------------------------------ save / load
    def config(self) -> dict:
        """The keyword arguments that rebuild this predictor around a module."""
        return {"num_frames": self.num_frames, "sampling": self.sampling, "fps": self.fps,
                "chat": asdict(self.chat), "max_new_tokens": self.max_new_tokens, "backend": self.backend}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``backbone/`` (:meth:`Backbone.save_pretrained`: the base backbone, LoRA adapters
        left out), ``heads/`` (:meth:`TPOModule.save_heads`: heads, task embeddings, token rows and
        the LoRA adapters) and ``tpo_predictor.json`` to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with without_adapters(self.backbone):
            self.backbone.save_pretrained(directory / BACKBONE_DIR)
        self.module.save_heads(directory / HEADS_DIR)
        (directory / PREDICTOR_CONFIG).write_text(json.dumps(self.config(), indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides) -> Predictor:
        """Load a folder written by :meth:`save_pretrained`: the backbone, then the heads (and LoRA)
        attached with :meth:`TPOModule.from_heads`. ``overrides`` replace saved predictor options.

        The loaded module is for inference: every parameter is frozen (``requires_grad=False``),
        so no autograd state is kept and the heads take the same kernels as the frozen module that
        was saved (a trainable parameter changes ATen's matmul path even under ``no_grad``)."""
        directory = Path(directory)
        needed = [directory / PREDICTOR_CONFIG, directory / BACKBONE_DIR / "tpo_backbone.json",
                  directory / HEADS_DIR / HEADS_CONFIG, directory / HEADS_DIR / HEADS_WEIGHTS]
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{directory}: missing {', '.join(missing)}; expected a folder written "
                                    "by Predictor.save_pretrained")
        config = json.loads((directory / PREDICTOR_CONFIG).read_text())
        config["chat"] = ChatFormat(**config["chat"])
        backbone = Backbone.from_pretrained(directory / BACKBONE_DIR)
        module = TPOModule.from_heads(directory / HEADS_DIR, backbone).requires_grad_(False)
        return cls(module, **{**config, **overrides})

    # ------------------------------------------------------------------ inputs
    def load_media(self, media: Media, index: int = 0) -> dict:
        """The collator item fields of one medium (:class:`~tpo.media.MediaReader`): ``video
        (T, H, W, 3)`` or ``image (H, W, 3)`` uint8 and ``meta`` (``duration`` s, ``frame_size``
        (H, W) px, ``timestamps`` s)."""
        return self.reader(media, index)

    def make_item(self, media: Media, question: str, box: Sequence[float] | None = None,
                  index: int = 0, query: str | None = None) -> dict:
        """The collator item of one question (no answer): media, the question, the first-frame
        box of a tracking question (``[x1, y1, x2, y2]`` pixels, for its ``<track_box>`` token)
        and the query the heads read when the model has ``query_words`` (default the question)."""
        box_tokens = [s.input_token for s in self.backbone.task_tokens.specs.values() if s.input_token]
        return question_item(self.load_media(media, index), question, box_tokens=box_tokens, box=box,
                             index=index, query=query)

    # ------------------------------------------------------------------ prediction
    def predict(self, media: Media, question: str, *, box: Sequence[float] | None = None,
                query: str | None = None, task: str | None = None, **generate_kwargs) -> Answer:
        """Answer one question about a video or image.

        Args:
            media: a video or image path, a PIL image, ``(H, W, 3)`` / ``(T, H, W, 3)`` uint8 RGB.
            question: the instruction (``<track_box>`` where a tracking question gives its box).
            box: ``[x1, y1, x2, y2]`` pixels of the target in the first frame, for tracking.
            query: the expression the question names (``"the red circle"``), for a model trained
                with ``query_words`` (its heads read these words); default the whole question.
            task: call this task's head whatever the model would generate: the answer is the
                task's ``<begin><placeholder>`` tokens, read teacher-forced (no generation), as a
                caller that knows the task wants (``None``: the model decides).
            generate_kwargs: passed to ``generate`` (``do_sample=True``, ``temperature``, ``top_p``,
                ``max_new_tokens``...); greedy by default.
        """
        return self.predict_batch([media], [question], boxes=[box], queries=[query], task=task,
                                  **generate_kwargs)[0]

    def predict_batch(self, media: Sequence[Media], questions: Sequence[str], *,
                      boxes: Sequence[Sequence[float] | None] | None = None,
                      queries: Sequence[str | None] | None = None, task: str | None = None,
                      **generate_kwargs) -> list[Answer]:
        """Answer a batch of questions, generated together (see :meth:`predict`)."""
        if isinstance(questions, str) or len(media) != len(questions):
            raise ValueError(
                f"media, questions: expected two sequences of the same length, got "
                f"{len(media)} media and {1 if isinstance(questions, str) else len(questions)} questions"
            )
        boxes = [None] * len(questions) if boxes is None else list(boxes)
        if len(boxes) != len(questions):
            raise ValueError(f"boxes: expected {len(questions)} entries (None where no box), "
                             f"got {len(boxes)}")
        queries = [None] * len(questions) if queries is None else list(queries)
        if len(queries) != len(questions):
            raise ValueError(f"queries: expected {len(questions)} entries (None for the question), "
                             f"got {len(queries)}")
        items = [self.make_item(m, q, b, i, query)
                 for i, (m, q, b, query) in enumerate(zip(media, questions, boxes, queries, strict=True))]
        return self.predict_items(items, task=task, **generate_kwargs)

    @torch.no_grad()
    def predict_items(self, items: Sequence[dict], *, task: str | None = None,
                      **generate_kwargs) -> list[Answer]:
        """Answer collator items (``video``/``image``, ``turns``, ``prompt_boxes``, ``meta``); the
        last turn's answer is ignored (``task``: see :meth:`predict`). This is what
        :meth:`predict_batch` and :func:`evaluate_predictor` run."""
        if not items or any(item.get("video") is None and item.get("image") is None for item in items):
            raise ValueError("items: expected at least one question, each with a video or an image")
        self.module.eval()
        if task is not None:
            return self._predict_forced(items, task)
        batch = {k: v.to(self.device) if isinstance(v, Tensor) else v
                 for k, v in self.collator(list(items)).items()}
        generation = generate_with_tasks(self.backbone, batch, max_new_tokens=self.max_new_tokens,
                                         **generate_kwargs)
        predictions = {} if generation.out is None else self._run_heads(batch, generation.out)
        tokenizer, tokens = self.backbone.tokenizer, self.backbone.task_tokens
        answers = []
        for b, meta in enumerate(batch["meta"]):
            task, prediction = predictions.get(b, (None, None))
            text = answer_text(tokenizer, tokens, generation.answer_ids(b), task)
            answers.append(make_answer(text, task, prediction, meta.get("timestamps")))
        return answers

    def _predict_forced(self, items: Sequence[dict], task: str) -> list[Answer]:
        """Every item answered with ``task``'s ``<begin><placeholder>``, read in one forward."""
        specs = self.backbone.task_tokens.specs
        if task not in specs or task not in self.module.heads:
            raise ValueError(f"task: the model has heads for {sorted(self.module.heads)}, not {task!r}")
        answer = specs[task].begin_token + specs[task].placeholder_token
        forced = [{**item, "turns": [*item["turns"][:-1], (item["turns"][-1][0], answer)]} for item in items]
        batch = {k: v.to(self.device) if isinstance(v, Tensor) else v
                 for k, v in self.forced_collator(forced).items()}
        predictions = self._run_heads(batch, self.module(batch))
        return [make_answer(answer, task, predictions[b][1], meta.get("timestamps"))
                for b, meta in enumerate(batch["meta"])]

    def _run_heads(self, batch: dict, out: BackboneOutput) -> dict[int, tuple[str, Any]]:
        """``{sample: (task, post-processed prediction)}`` for the samples that called a task."""
        predictions = {}
        for name, (head_out, index) in self.module.run_heads(batch, out).items():
            meta = self.module.model.prediction_meta(batch, name, index)
            for m, b in zip(meta, index.tolist(), strict=True):  # a temporal call on an image
                m.setdefault("duration", int(out.visual_mask[b].sum()) / self.fps)
            preds = self.module.heads[name].postprocess(head_out, meta)
            predictions.update({b: (name, p) for b, p in zip(index.tolist(), preds, strict=True)})
        return predictions

    def write_submission(self, answers: Sequence[Answer], samples: Sequence[Any], *, benchmark: str,
                         out: str | os.PathLike) -> Path:
        """Write ``answers`` (``samples[i]`` identifies ``answers[i]``) as ``benchmark``'s submission
        at ``out``, in the official layout: :func:`tpo.submission.write_submission`."""
        from tpo.submission import write_submission

        return write_submission(answers, samples, benchmark=benchmark, out=out)


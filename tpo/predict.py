"""Inference: a video (or image) and a question in, text and task predictions out.

The flow TPO uses. The prompt is built by the :class:`~tpo.datamodules.TaskCollator` exactly as
for training, without the answer and ending in the assistant prefix, left-padded. The backbone
encodes the media once (the features the heads read and the ones the LLM reads) and runs the
prompt but its last token through the LLM, with the ``<track_box>`` embeddings injected; then
``generate`` continues from that cache, greedy by default, with every task-begin token as a stop
token. Each sample that stopped on a task-begin token gets ONE more forward step on the KV cache
``generate`` returns: its task's placeholder token (whose input embedding is the learned task
embedding, put in by the backbone's injection hook), attending to the prompt and the generated
tokens up to the begin token. The last hidden state at the placeholder is the task embedding the
head reads with the visual features; the head's post-processed prediction comes back in seconds
and pixels. A sample that ends otherwise answers in text.

Samples of a batch are generated together; the only per-token loop is ``generate``'s own. The
prompt is run before ``generate`` (not by it) because its ``<track_box>`` tokens take the given
boxes in that forward only; ``generate`` gets the cache and the last prompt token.

Example::

    predictor = Predictor(module, num_frames=8)            # or Predictor.from_pretrained(folder)
    answer = predictor.predict("clip.mp4", "When is the red circle visible?")
    answer.task, answer.spans                              # "temporal", (K, 2) seconds
    predictor.predict("clip.mp4", "Follow the red circle starting from <track_box>.",
                      box=[3, 4, 12, 13]).track            # (T, 4) xywh pixels

Only LLaVA-family backbones (:class:`~tpo.backbones.LlavaBackbone`) generate here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tpo.backbones.base import Backbone, BackboneOutput
from tpo.backbones.llava import LlavaBackbone
from tpo.backbones.lora import is_lora_parameter
from tpo.datamodules.collate import ChatFormat, TaskCollator
from tpo.datamodules.multitask import synthetic_task_dataset
from tpo.datamodules.synthetic import SyntheticDataset
from tpo.datamodules.video import IMAGE_EXTENSIONS, VideoReader, sample_indices
from tpo.module import HEADS_CONFIG, HEADS_WEIGHTS, TPOModule
from tpo.tasks import BUILTIN_TASKS, get_task
from tpo.tokens import TaskGather

__all__ = ["Answer", "Predictor", "evaluate_predictor"]

PREDICTOR_CONFIG = "tpo_predictor.json"
BACKBONE_DIR, HEADS_DIR = "backbone", "heads"
_UNSUPPORTED_GENERATE = ("num_beams", "num_return_sequences", "eos_token_id", "pad_token_id",
                         "return_dict_in_generate", "input_ids", "attention_mask", "cache",
                         "past_key_values")

_PLACEHOLDER_STEP = 1
"""Where the placeholder token sits in :meth:`Predictor._task_step`'s two-token step."""

Media = Any  # a path, a PIL image, an (H, W, 3) or (T, H, W, 3) uint8 array / tensor


@dataclass
class Answer:
    """The answer to one question.

    Attributes:
        text: the generated text (task tokens kept, e.g. ``"<time_begin><temp>"``; end-of-sequence
            and padding dropped).
        task: the task the model called (``"temporal"``, ``"box"``, ``"track"``, ``"mask"``), or
            ``None`` for a text answer.
        spans: temporal: ``(K, 2)`` ``[start_s, end_s]`` seconds, best first.
        boxes: box: ``(1, 4)`` ``[x1, y1, x2, y2]`` pixels of the input image.
        track: track: ``(T, 4)`` ``[x, y, w, h]`` pixels, one box per frame read.
        masks: mask: ``(T, H, W)`` bool at the frame size, one mask per frame read.
        scores: temporal ``(K,)`` foreground probability of each span; track ``(T,)`` visibility
            probability; mask ``(T,)`` predicted IoU.
        timestamps: ``(T,)`` seconds of the frames the model read (``(1,)`` zero for an image).
        prediction: the head's post-processed prediction object, unchanged.
    """

    text: str
    task: str | None = None
    spans: Tensor | None = None
    boxes: Tensor | None = None
    track: Tensor | None = None
    masks: Tensor | None = None
    scores: Tensor | None = None
    timestamps: np.ndarray | None = None
    prediction: Any = None


def _answer(text: str, task: str | None, prediction: Any, timestamps: np.ndarray | None) -> Answer:
    fields = get_task(task).answer_fields(prediction) if task is not None else {}
    return Answer(text=text, task=task, timestamps=timestamps, prediction=prediction, **fields)


# ---------------------------------------------------------------------------- media
def _as_uint8_array(media: Any) -> np.ndarray:
    if isinstance(media, Tensor):
        media = media.detach().cpu().numpy()
    array = np.asarray(media)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(
            f"media: expected an (H, W, 3) image or (T, H, W, 3) frames of uint8 RGB, "
            f"got shape {array.shape} dtype {array.dtype}"
        )
    return array


def _box_to_normalised(box: Sequence[float], height: int, width: int, index: int) -> np.ndarray:
    """``[x1, y1, x2, y2]`` pixels -> ``(1, 4)`` normalised ``(cx, cy, w, h)``."""
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"box of sample {index}: expected [x1, y1, x2, y2] pixels, got {box!r}")
    x1, y1, x2, y2 = values
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError(
            f"box of sample {index}: {values.tolist()} is not a non-empty xyxy box inside the "
            f"first frame ({width} x {height} px)"
        )
    return np.array([[(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]],
                    dtype=np.float32)


# ---------------------------------------------------------------------------- LoRA export
@contextmanager
def _without_adapters(root: nn.Module) -> Iterator[None]:
    """Inside the context, PEFT layers of ``root`` are replaced by the layers they wrap (LoRA
    linears by their base linear, trainable-token wrappers by the original embedding), whose
    weights PEFT leaves untouched: ``root`` is the base model. Restored on exit."""
    if not any(is_lora_parameter(n) for n, _ in root.named_parameters()):
        yield
        return
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    swaps, done = [], []
    for name, module in list(root.named_modules()):
        if any(name.startswith(prefix + ".") for prefix in done):
            continue
        if isinstance(module, AuxiliaryTrainingWrapper):
            base = module.original_module
        elif isinstance(module, BaseTunerLayer):
            if getattr(module, "merged", False):
                raise ValueError(f"{name}: LoRA weights are merged into the base layer; unmerge them first")
            base = module.get_base_layer()
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        swaps.append((root.get_submodule(parent_name), child, module, base))
        done.append(name)
    try:
        for parent, child, _, base in swaps:
            setattr(parent, child, base)
        yield
    finally:
        for parent, child, module, _ in reversed(swaps):
            setattr(parent, child, module)


# ---------------------------------------------------------------------------- predictor
class Predictor:
    """Answers questions about videos and images with a trained :class:`~tpo.TPOModule`.

    Args:
        module: the trained module (put in eval mode; predictions run without gradients). Its
            backbone must be a :class:`~tpo.backbones.LlavaBackbone`.
        num_frames: frames read from a video (path or array), sampled with ``sampling``.
        sampling: ``"uniform"`` (as the validation datasets) or ``"middle"``.
        fps: frame rate assumed for videos given as arrays (their timestamps are ``index / fps``).
        chat: the chat format the model was trained with (default :class:`ChatFormat`).
        max_new_tokens: generation length limit.
        backend: :class:`~tpo.datamodules.VideoReader` backend for video files.
    """

    def __init__(
        self,
        module: TPOModule,
        *,
        num_frames: int = 8,
        sampling: str = "uniform",
        fps: float = 1.0,
        chat: ChatFormat | None = None,
        max_new_tokens: int = 32,
        backend: str = "auto",
    ) -> None:
        if not isinstance(module.backbone, LlavaBackbone):
            raise ValueError(
                f"module.backbone: Predictor generates with LLaVA-family backbones "
                f"(LlavaBackbone), got {type(module.backbone).__name__}"
            )
        if module.backbone.task_tokens is None:
            raise ValueError("module.backbone: has no task tokens")
        if sampling not in ("uniform", "middle"):
            raise ValueError(f"sampling: expected 'uniform' or 'middle', got {sampling!r}")
        if num_frames < 1 or fps <= 0 or max_new_tokens < 1:
            raise ValueError(
                f"num_frames, fps, max_new_tokens: expected positive values, got {num_frames}, {fps}, "
                f"{max_new_tokens}"
            )
        self.module = module.eval()
        self.num_frames, self.sampling, self.fps = num_frames, sampling, fps
        self.chat = chat or ChatFormat()
        self.max_new_tokens, self.backend = max_new_tokens, backend
        self.collator = TaskCollator.from_backbone(
            module.backbone, chat=self.chat, generation=True, padding_side="left"
        )

    @property
    def backbone(self) -> LlavaBackbone:
        return self.module.backbone

    @property
    def device(self) -> torch.device:
        return self.module.device

    # ------------------------------------------------------------------ save / load
    def config(self) -> dict:
        """The keyword arguments that rebuild this predictor around a module."""
        return {
            "num_frames": self.num_frames,
            "sampling": self.sampling,
            "fps": self.fps,
            "chat": asdict(self.chat),
            "max_new_tokens": self.max_new_tokens,
            "backend": self.backend,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``backbone/`` (:meth:`Backbone.save_pretrained`: the base backbone, LoRA adapters
        left out), ``heads/`` (:meth:`TPOModule.save_heads`: heads, task embeddings, token rows and
        the LoRA adapters) and ``tpo_predictor.json`` to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with _without_adapters(self.backbone):
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
        needed = [
            directory / PREDICTOR_CONFIG,
            directory / BACKBONE_DIR / "tpo_backbone.json",
            directory / HEADS_DIR / HEADS_CONFIG,
            directory / HEADS_DIR / HEADS_WEIGHTS,
        ]
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{directory}: missing {', '.join(missing)}; expected a folder written by "
                "Predictor.save_pretrained"
            )
        config = json.loads((directory / PREDICTOR_CONFIG).read_text())
        config["chat"] = ChatFormat(**config["chat"])
        backbone = Backbone.from_pretrained(directory / BACKBONE_DIR)
        module = TPOModule.from_heads(directory / HEADS_DIR, backbone).requires_grad_(False)
        return cls(module, **{**config, **overrides})

    # ------------------------------------------------------------------ inputs
    def load_media(self, media: Media, index: int = 0) -> dict:
        """The collator item fields of one medium: ``video (T, H, W, 3)`` or ``image (H, W, 3)``
        uint8 and ``meta`` (``duration`` s, ``frame_size`` (H, W) px, ``timestamps`` s).

        Raises:
            FileNotFoundError: a path that does not exist (named).
            ValueError: an undecodable file (named), an array that is not uint8 RGB.
        """
        if isinstance(media, (str, os.PathLike)):
            path = os.fspath(media)
            if not os.path.exists(path):
                raise FileNotFoundError(f"media of sample {index}: {path} not found")
            reader = VideoReader(path, backend=self.backend)
            if path.lower().endswith(IMAGE_EXTENSIONS):
                image = reader.get_frames([0]).frames[0]
                return self._image_item(image)
            clip = reader.sample(self.num_frames, mode=self.sampling)
            return {
                "video": clip.frames,
                "meta": {"duration": clip.duration, "frame_size": clip.frames.shape[1:3],
                         "timestamps": clip.timestamps},
            }
        if hasattr(media, "convert") and hasattr(media, "size"):  # PIL image
            return self._image_item(np.asarray(media.convert("RGB")))
        array = _as_uint8_array(media)
        if array.ndim == 3:
            return self._image_item(array)
        indices = sample_indices(len(array), self.num_frames, self.sampling)
        return {
            "video": np.ascontiguousarray(array[indices]),
            "meta": {"duration": len(array) / self.fps, "frame_size": array.shape[1:3],
                     "timestamps": indices / self.fps},
        }

    @staticmethod
    def _image_item(image: np.ndarray) -> dict:
        image = _as_uint8_array(image)
        return {"image": image,
                "meta": {"frame_size": image.shape[:2], "timestamps": np.zeros(1)}}

    def make_item(self, media: Media, question: str, box: Sequence[float] | None = None,
                  index: int = 0, query: str | None = None) -> dict:
        """The collator item of one question (no answer): media, the question, the first-frame
        box of a tracking question (``[x1, y1, x2, y2]`` pixels, for its ``<track_box>`` token)
        and the query the heads read when the model has ``query_words`` (default the question)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question of sample {index}: expected a non-empty string, got {question!r}")
        item = {"task": "predict", "id": index, "turns": [(question, "")], "target": None,
                "query": question if query is None else query, **self.load_media(media, index)}
        box_tokens = _count_box_tokens(self.backbone, question)
        token = ", ".join(s.input_token for s in self.backbone.task_tokens.specs.values() if s.input_token)
        if box_tokens and box is None:
            raise ValueError(
                f"question of sample {index}: it has the input-box token {token} but no box was given; "
                "pass box=[x1, y1, x2, y2] (pixels, the target in the first frame)"
            )
        if box is not None and box_tokens != 1:
            raise ValueError(
                f"question of sample {index}: box= was given, so the question needs exactly one "
                f"{token} token where the box goes (e.g. 'Track the red circle given at {token} "
                f"through the video.'), found {box_tokens}"
            )
        if box is not None:
            height, width = item["meta"]["frame_size"]
            item["input_boxes"] = _box_to_normalised(box, int(height), int(width), index)
        return item

    # ------------------------------------------------------------------ prediction
    def predict(self, media: Media, question: str, *, box: Sequence[float] | None = None,
                query: str | None = None, **generate_kwargs) -> Answer:
        """Answer one question about a video or image.

        Args:
            media: a video or image path, a PIL image, ``(H, W, 3)`` / ``(T, H, W, 3)`` uint8 RGB.
            question: the instruction (``<track_box>`` where a tracking question gives its box).
            box: ``[x1, y1, x2, y2]`` pixels of the target in the first frame, for tracking.
            query: the expression the question names (``"the red circle"``), for a model trained
                with ``query_words`` (its heads read these words); default the whole question.
            generate_kwargs: passed to ``generate`` (``do_sample=True``, ``temperature``, ``top_p``,
                ``max_new_tokens``...); greedy by default.
        """
        return self.predict_batch([media], [question], boxes=[box], queries=[query], **generate_kwargs)[0]

    def predict_batch(self, media: Sequence[Media], questions: Sequence[str], *,
                      boxes: Sequence[Sequence[float] | None] | None = None,
                      queries: Sequence[str | None] | None = None,
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
        return self.predict_items(items, **generate_kwargs)

    @torch.no_grad()
    def predict_items(self, items: Sequence[dict], **generate_kwargs) -> list[Answer]:
        """Answer collator items (``video``/``image``, ``turns``, ``input_boxes``, ``meta``); the
        last turn's answer is ignored. This is what :meth:`predict_batch` and
        :func:`evaluate_predictor` run."""
        bad = [k for k in _UNSUPPORTED_GENERATE if k in generate_kwargs]
        if bad:
            raise ValueError(f"generate_kwargs: {bad} are set by the Predictor (one greedy or sampled "
                             "sequence per question, task-begin tokens stop it)")
        if not items or any(item.get("video") is None and item.get("image") is None for item in items):
            raise ValueError("items: expected at least one question, each with a video or an image")
        self.module.eval()
        batch = self._to_device(self.collator(list(items)))
        mm, visual, visual_mask, frames = self.backbone.encode_visual(batch)
        new, cache = self._generate(batch, mm, generate_kwargs)
        begin_ids = self.backbone.task_tokens.begin_ids
        eos = self.backbone.tokenizer.eos_token_id
        stops = torch.isin(new, torch.cat([begin_ids, begin_ids.new_tensor([eos])]))
        stop_at = torch.where(stops.any(1), stops.long().argmax(1), new.shape[1] - 1)  # (B,)
        last = new.gather(1, stop_at[:, None])[:, 0]
        calls = (last[:, None] == begin_ids).any(1)  # (B,) the sequence stopped on a task-begin token
        task_index = (last[:, None] == begin_ids).long().argmax(1)  # (B,) which task, where it did
        predictions: dict[int, tuple[str, Any]] = {}
        if bool(calls.any()):
            out = self._task_step(cache, new, batch["attention_mask"], stop_at, task_index)
            out.visual, out.visual_mask, out.frames = visual, visual_mask, frames
            out.visual_grid = self.backbone._grid(visual.shape[2])
            for t, name in enumerate(self.backbone.task_tokens.task_names):
                rows = (calls & (task_index == t)).nonzero().flatten()
                position = torch.full_like(rows, _PLACEHOLDER_STEP)
                out.tasks[name] = TaskGather(out.hidden_states[rows, position], rows, position)
            predictions = self._run_heads(batch, out)
        return [self._make_answer(new[b, : int(stop_at[b]) + 1], meta, *predictions.get(b, (None, None)))
                for b, meta in enumerate(batch["meta"])]

    def _special_ids(self) -> list[int]:
        """Media and input-box token ids: never generated, never last in a prompt."""
        backbone = self.backbone
        boxes = backbone.task_tokens.input_ids_of_boxes.tolist()
        ids = [backbone.image_token_id, backbone.video_token_id, *boxes]
        return [i for i in ids if i is not None]

    def _generate(self, batch: dict, mm: dict, generate_kwargs: dict) -> tuple[Tensor, Any]:
        """Run the prompt but its last token through the LLM (media features from ``mm``, input
        boxes injected), then ``generate`` from that cache.

        Returns:
            ``(B, n)`` generated tokens (padding after a sequence stops) and the cache, which holds
            the prompt and all generated tokens but the last.
        """
        backbone, tokens = self.backbone, self.backbone.task_tokens
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        if not bool(mask[:, -1].all()):
            raise ValueError("collator: prompts must be left-padded for generation")
        special = self._special_ids()
        if torch.isin(input_ids[:, -1], input_ids.new_tensor(special)).any():
            raise ValueError("prompt: ends in a media or input-box token; the chat format must end "
                             "the prompt with text (the assistant prefix)")
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded prompts
        prefix = {"input_ids": input_ids[:, :-1], "attention_mask": mask[:, :-1],
                  "track_boxes": batch["track_boxes"]}
        prefill = backbone._lm_forward(prefix, mm_encoder_outputs=mm or None, position_ids=positions[:, :-1],
                                       use_cache=True)
        tokenizer = backbone.tokenizer
        eos = tokenizer.eos_token_id
        pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        kwargs = {"do_sample": False, "max_new_tokens": self.max_new_tokens, **generate_kwargs}
        never = {*special, *tokens.placeholder_ids.tolist(), *kwargs.get("suppress_tokens", [])}
        kwargs["suppress_tokens"] = sorted(never)
        generated = backbone.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            cache=prefill.cache,
            eos_token_id=[eos, *tokens.begin_ids.tolist()],
            pad_token_id=pad,
            return_dict_in_generate=True,
            **kwargs,
        )
        new = generated.sequences[:, input_ids.shape[1]:]
        cache = generated.cache
        if cache.get_seq_length() != input_ids.shape[1] + new.shape[1] - 1:
            raise RuntimeError(
                f"generate returned a cache of {cache.get_seq_length()} tokens for a prompt of "
                f"{input_ids.shape[1]} and {new.shape[1]} new tokens (expected all but the last)"
            )
        return new, cache

    def _task_step(self, cache: Any, new: Tensor, mask: Tensor, stop_at: Tensor, task_index: Tensor
                   ) -> BackboneOutput:
        """One forward on ``generate``'s cache: the last generated token (not yet in the cache) and
        each sample's placeholder token, which attends to the prompt and to the generated tokens up
        to its task-begin token (the injection hook gives it the task embedding).

        Args:
            cache: the prompt and ``new[:, :-1]``.
            new: ``(B, n)`` generated tokens.
            mask: ``(B, L)`` the prompt's attention mask (left padding).
            stop_at: ``(B,)`` index in ``new`` of each sample's task-begin token.
            task_index: ``(B,)`` each sample's task (index into the task names).

        Returns:
            the step's ``logits (B, 2, V)`` and ``hidden_states (B, 2, D)``; ``hidden_states[:, 1]``
            are the task embeddings (meaningless for samples that called no task).
        """
        backbone = self.backbone
        width = new.shape[1]
        step_ids = torch.stack([new[:, -1], backbone.task_tokens.placeholder_ids[task_index]], 1)
        seen = torch.arange(width, device=new.device)[None] <= stop_at[:, None]  # (B, n)
        full_mask = torch.cat([mask, seen.to(mask.dtype), torch.ones_like(mask[:, :1])], 1)
        prompt_len = mask.sum(1)
        positions = torch.stack([prompt_len + width - 1, prompt_len + stop_at + 1], 1)
        out = backbone.model(
            input_ids=step_ids,
            attention_mask=full_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            output_hidden_states=True,
            return_dict=True,
        )
        return BackboneOutput(loss=None, logits=out.logits, hidden_states=out.hidden_states[-1])

    def _run_heads(self, batch: dict, out: BackboneOutput) -> dict[int, tuple[str, Any]]:
        """``{sample: (task, post-processed prediction)}`` for the samples that called a task."""
        predictions = {}
        for name, (head_out, index) in self.module.run_heads(batch, out).items():
            meta = TPOModule._meta(batch, name, index, None)
            for m, b in zip(meta, index.tolist(), strict=True):  # a temporal call on an image
                m.setdefault("duration", int(out.visual_mask[b].sum()) / self.fps)
            preds = self.module.heads[name].postprocess(head_out, meta)
            predictions.update({b: (name, p) for b, p in zip(index.tolist(), preds, strict=True)})
        return predictions

    def _make_answer(self, ids: Tensor, meta: Mapping, task: str | None, prediction: Any) -> Answer:
        tokenizer, tokens = self.backbone.tokenizer, self.backbone.task_tokens
        drop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        kept = [i for i in ids.tolist() if i not in drop]
        if task is not None:
            kept.append(int(tokens.placeholder_ids[tokens.task_names.index(task)]))
        text = tokenizer.decode(kept, skip_special_tokens=False).strip()
        return _answer(text, task, prediction, meta.get("timestamps"))

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _count_box_tokens(backbone: Backbone, question: str) -> int:
    return sum(question.count(s.input_token) for s in backbone.task_tokens.specs.values() if s.input_token)


# ---------------------------------------------------------------------------- evaluation
def evaluate_predictor(
    predictor: Predictor,
    root: str | os.PathLike,
    split: str = "val",
    *,
    tasks: Sequence[str] = BUILTIN_TASKS,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    **generate_kwargs,
) -> dict[str, dict[str, float]]:
    """Run the predictor over a split written by :func:`~tpo.datamodules.make_synthetic_dataset`
    and score it with the task metrics :class:`~tpo.TPOModule` logs.

    Each sample is read as the validation datasets read it (``num_frames`` of the predictor,
    uniform sampling) and asked its dataset question (:func:`~tpo.datamodules.prompts.make_prompt`,
    seeded per sample), with the first-frame box for tracking. A question the model answers with
    another task or in text counts as a miss (the metrics' ``generated`` mode of the module).

    Returns:
        ``{task: {metric: value, ..., "assign_acc": fraction of questions where the model called
        this task, "n": number of questions}}``; metrics as :mod:`tpo.metrics` computes them
        (temporal ``R1@0.5`` / ``mIoU``, box ``acc@0.5``, track ``success``, mask ``J&F``...).
    """
    from tqdm.auto import tqdm

    data = SyntheticDataset.load(root)
    if split not in data.files:
        raise ValueError(f"split: {root} has splits {sorted(data.files)}, not {split!r}")
    results: dict[str, dict[str, float]] = {}
    for task in tasks:
        if task not in BUILTIN_TASKS:
            raise ValueError(f"tasks: the synthetic data has {BUILTIN_TASKS}, not {task!r}")
        dataset = synthetic_task_dataset(data, task, split, num_frames=predictor.num_frames,
                                         sampling="uniform")
        count = len(dataset) if limit is None else min(limit, len(dataset))
        task_obj = get_task(task)
        metric = task_obj.make_metric()
        called = 0
        bar = tqdm(total=count, desc=f"predict {task}", disable=not progress, leave=False)
        for start in range(0, count, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, count))]
            answers = predictor.predict_items(items, **generate_kwargs)
            rows = TaskCollator._targets(items)[task]
            meta = [task_obj.prediction_meta(item["meta"], rows, i) for i, item in enumerate(items)]
            preds = [a.prediction if a.task == task else None for a in answers]
            called += sum(p is not None for p in preds)
            task_obj.score(metric, preds, rows, meta)
            bar.update(len(items))
        bar.close()
        values = {k: float(v) for k, v in metric.compute().items() if v.numel() == 1}
        results[task] = {**values, "assign_acc": called / max(count, 1), "n": float(count)}
    return results

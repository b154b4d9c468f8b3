"""The backbone protocol and the backbone registry.

A backbone is an MLLM that reads a collated batch and returns hidden states and per-frame visual
tokens (:class:`BackboneOutput`). Every backbone injects the task embeddings of its
:class:`~tpo.tokens.TaskTokens` through a forward hook on the LLM's input-embedding module (no
part of transformers is patched), so the same injection happens in training forwards and in
``generate``.

Each model family registers its class for the ``model_type`` values it serves
(:func:`register_backbone`); :meth:`Backbone.from_pretrained` asks the registry
(:func:`backbone_class`) with the ``model_type`` of the folder's ``tpo_backbone.json`` or, for a
plain Hugging Face folder, of its ``config.json``. ``import tpo.backbones`` registers the
built-in families (LLaVA, Qwen-VL, InternVL, VideoChat).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tpo.backbones.lora import is_lora_parameter
from tpo.chat import ChatFormat, chat_format_from_template
from tpo.tokens import TaskGather, TaskTokens

__all__ = [
    "Backbone",
    "BackboneOutput",
    "EncodedVisual",
    "backbone_class",
    "group_frames",
    "register_backbone",
    "registered_model_types",
]

CONFIG_NAME = "tpo_backbone.json"
MODALITY_WEIGHTS = "modality_branches.safetensors"
TASK_TOKENS_DIR = "task_tokens"


@dataclass
class BackboneOutput:
    """What a backbone returns for a batch.

    Attributes:
        loss: scalar language-modelling loss over the ``labels`` (``None`` without labels).
        logits: ``(B, L, V)`` next-token logits.
        hidden_states: ``(B, L, D)`` the LLM's last hidden states (after its final norm).
        visual: ``(B, T, N, D_v)`` per-frame visual tokens for the heads — ``T`` frames (an image
            is one frame), ``N = h * w`` tokens on the patch grid :attr:`visual_grid`, width
            ``D_v`` = the backbone's :attr:`Backbone.visual_dim`; ``None`` for a text-only batch.
        visual_mask: ``(B, T)`` bool, True for real frames (samples with fewer frames are padded).
        visual_grid: ``(h, w)`` of the patch grid behind ``N``.
        frames: ``(B, F, 3, H, W)`` the normalised frames the vision tower read, aligned with
            :meth:`per_frame` (for heads that want pixels, e.g. a mask head's high-resolution skips).
        temporal_stride: sampled frames per step of ``visual``'s ``T`` axis: 1 when every frame
            has its own tokens; Qwen-VL's temporal patch gives 2 (step ``t`` covers frames
            ``2t, 2t + 1``, a clip of odd length padded with its last frame).
        num_frames: ``(B,)`` long, the sampled frames of each sample behind its ``visual`` steps
            (needed when ``temporal_stride > 1``; ``None``: ``visual_mask``'s counts).
        tasks: ``{task: TaskGather}`` hidden states at each task's placeholder tokens.
    """

    loss: Tensor | None
    logits: Tensor
    hidden_states: Tensor
    visual: Tensor | None = None
    visual_mask: Tensor | None = None
    visual_grid: tuple[int, int] | None = None
    frames: Tensor | None = None
    temporal_stride: int = 1
    num_frames: Tensor | None = None
    tasks: dict[str, TaskGather] = field(default_factory=dict)

    def per_frame(self) -> tuple[Tensor, Tensor]:
        """``visual`` and its mask with one step per sampled frame, as the heads read them:
        ``(B, F, N, D_v)`` and ``(B, F)`` bool, ``F = max(num_frames)``; each step of a
        ``temporal_stride > 1`` backbone is repeated for the frames it covers."""
        if self.visual is None or self.visual_mask is None:
            raise ValueError("backbone output: no visual tokens (a text-only batch)")
        if self.temporal_stride == 1:
            return self.visual, self.visual_mask
        if self.num_frames is None:
            raise ValueError(f"backbone output: temporal_stride {self.temporal_stride} without num_frames")
        frames = int(self.num_frames.max())
        visual = self.visual.repeat_interleave(self.temporal_stride, dim=1)[:, :frames]
        mask = torch.arange(frames, device=visual.device)[None] < self.num_frames.to(visual.device)[:, None]
        return visual, mask


@dataclass
class EncodedVisual:
    """A batch's media encoded once (a backbone's ``encode_visual``), for the LLM and the heads.

    Attributes:
        mm_encoder_outputs: ``{"image": ..., "video": ...}`` the model's own encoder outputs, for
            its ``mm_encoder_outputs`` argument (empty for a text-only batch).
        fields: the media's :class:`BackboneOutput` fields — ``visual``, ``visual_mask``,
            ``visual_grid``, ``frames`` and, where a family sets them, ``temporal_stride`` and
            ``num_frames`` (empty for a text-only batch).
    """

    mm_encoder_outputs: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)


def group_frames(features: Tensor, counts: list[int], *, name: str) -> tuple[Tensor, Tensor]:
    """Group per-frame tokens by sample, padding samples with fewer frames.

    Args:
        features: ``(F, N, D)`` tokens of ``F = sum(counts)`` frames, samples in order.
        counts: frames per sample, ``len(counts) = B``.
        name: what the features are, for the error message.

    Returns:
        ``(B, T, N, D)`` grouped tokens with ``T = max(counts)`` (zeros where padded) and
        ``(B, T)`` bool frame mask.
    """
    if sum(counts) != features.shape[0]:
        raise ValueError(
            f"{name}: {features.shape[0]} frames of features for {sum(counts)} "
            f"placeholders ({counts} per sample)"
        )
    batch, frames = len(counts), max(counts, default=0)
    counts_t = torch.tensor(counts, device=features.device)
    mask = torch.arange(frames, device=features.device)[None, :] < counts_t[:, None]
    out = features.new_zeros(batch, frames, *features.shape[1:])
    out[mask] = features
    return out, mask


class Backbone(nn.Module):
    """Base class of the backbones.

    Subclasses set :attr:`model_type` (a key they are registered under), :attr:`processor`,
    :attr:`visual_dim`, :attr:`language_model` (the module whose ``get_input_embeddings`` is
    hooked) and implement :meth:`forward`, :meth:`_save_model`, :meth:`_load` and, to read plain
    Hugging Face folders, :meth:`_load_hf`.
    """

    task_tokens: TaskTokens | None
    processor: Any
    visual_dim: int
    model_type: str

    def __init__(self) -> None:
        super().__init__()
        self._hook_handle = None
        self._pending_prompt_boxes: Tensor | None = None
        self.modality_adaptive = None

    @property
    def tokenizer(self):
        """The Hugging Face tokenizer."""
        return self.processor.tokenizer

    @property
    def hidden_size(self) -> int:
        return self.language_model.get_input_embeddings().weight.shape[1]

    @property
    def language_model(self) -> nn.Module:
        """The module whose input embeddings carry the task tokens (has ``get_input_embeddings``)."""
        raise NotImplementedError

    def chat_format(self) -> ChatFormat:
        """The format prompts are written in: the one of the processor's chat template
        (:func:`~tpo.chat.chat_format_from_template`), LLaVA-1.5's without a template."""
        return chat_format_from_template(self.processor) or ChatFormat()

    def position_ids(self, batch: Mapping[str, Any]) -> Tensor:
        """The positions of the batch's tokens as the LLM numbers them: ``(B, L)``, counting the
        attended tokens (left padding skipped), as ``generate`` numbers a left-padded prompt; a
        family with multi-axis positions (Qwen's M-RoPE) returns ``(..., B, L)``. Tokens after the
        batch continue at ``position_ids[..., -1:] + 1``."""
        mask = self.require(batch, "attention_mask")
        return (mask.long().cumsum(-1) - 1).clamp(min=0)

    def media_token_ids(self) -> list[int]:
        """Ids of the tokens that stand for media in the text (the placeholders a processor expands,
        and a family's markers around them): never generated, never last in a prompt."""
        ids = (getattr(self, "image_token_id", None), getattr(self, "video_token_id", None))
        return [i for i in ids if i is not None]

    def enable_modality_adaptive(self, num_modalities: int = 2):
        """Give the LLM mPLUG-Owl2's modality-adaptive layers (per-modality norms and k/v
        projections); visual tokens use modality 1. Wrap before :func:`~tpo.backbones.lora.apply_lora`.

        Returns:
            The :class:`~tpo.backbones.modality_adaptive.ModalityAdaptive` handle.
        """
        raise NotImplementedError

    def lora_scope(self) -> tuple[nn.Module, str]:
        """The module LoRA adapters are injected into and a regex prefix of its LLM layers' names."""
        raise NotImplementedError

    # ------------------------------------------------------------------ task tokens
    def attach_task_tokens(self, task_tokens: TaskTokens | None = None, **kwargs) -> TaskTokens:
        """Give the backbone task tokens: added to the tokenizer and the LLM's embeddings.

        Args:
            task_tokens: the module to attach; by default a new :class:`TaskTokens` of the LLM's
                hidden size built with ``kwargs`` (e.g. ``tasks=["temporal", "box"]``).
        """
        if task_tokens is None:
            task_tokens = TaskTokens(hidden_size=self.hidden_size, **kwargs)
        if task_tokens.hidden_size != self.hidden_size:
            raise ValueError(
                f"task_tokens: hidden size {task_tokens.hidden_size} differs from the "
                f"LLM's {self.hidden_size}"
            )
        task_tokens.add_to(self.tokenizer, self.language_model)
        self.task_tokens = task_tokens
        self.install_injection_hook()
        return task_tokens

    def install_injection_hook(self) -> None:
        """(Re)register the forward hook that injects task embeddings on the input embeddings.

        Call it again after replacing the embedding module (e.g. by PEFT).
        """
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None
        if getattr(self, "task_tokens", None) is not None:
            embedding = self.language_model.get_input_embeddings()
            self._hook_handle = embedding.register_forward_hook(self._inject_hook)

    def _inject_hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        input_ids = args[0] if args else None
        if not isinstance(input_ids, Tensor) or input_ids.ndim != 2 or output.ndim != 3:
            return None
        return self.task_tokens.inject(input_ids, output, self._pending_prompt_boxes)

    @contextmanager
    def prompt_boxes(self, boxes: Tensor | None):
        """Boxes for the ``<track_box>`` tokens of the forwards run inside this context.

        ``boxes (K, 4)`` normalised ``(cx, cy, w, h)``, one per input-box token in row-major order.
        """
        previous, self._pending_prompt_boxes = self._pending_prompt_boxes, boxes
        try:
            yield
        finally:
            self._pending_prompt_boxes = previous

    def gather_tasks(self, input_ids: Tensor, hidden_states: Tensor) -> dict[str, TaskGather]:
        if self.task_tokens is None:
            return {}
        return self.task_tokens.gather(input_ids, hidden_states)

    # ------------------------------------------------------------------ batches
    @staticmethod
    def require(batch: Mapping[str, Any], key: str) -> Tensor:
        """``batch[key]``, or a ``ValueError`` naming the missing key and the batch's keys."""
        if key not in batch or batch[key] is None:
            raise ValueError(f"batch: missing {key!r}; got keys {sorted(batch)}")
        return batch[key]

    def lm_forward(self, batch: Mapping[str, Any], **model_kwargs) -> Any:
        """Run the wrapped Hugging Face model (``self.model``) on the batch's ``input_ids (B, L)``,
        ``attention_mask (B, L)`` and ``labels (B, L)``, with ``prompt_boxes (K, 4)`` injected at
        the input-box tokens and ``model_kwargs`` passed on (``mm_encoder_outputs``,
        ``position_ids``, ``use_cache``...).

        Returns:
            the model's output (``logits (B, L, V)``, ``hidden_states`` of every layer, ``loss``,
            ``cache`` when ``use_cache``).
        """
        input_ids = self.require(batch, "input_ids")
        with self.prompt_boxes(batch.get("prompt_boxes")):
            return self.model(
                input_ids=input_ids,
                attention_mask=batch.get("attention_mask"),
                labels=batch.get("labels"),
                output_hidden_states=True,
                return_dict=True,
                **model_kwargs,
            )

    def grid_size(self, num_tokens: int) -> tuple[int, int]:
        """``(h, w)`` of the patch grid behind ``num_tokens = h * w`` visual tokens per frame (the
        ``N`` of ``visual (B, T, N, D_v)``): square when ``N`` is a square, else one row ``(1, N)``."""
        side = math.isqrt(num_tokens)
        return (side, side) if side * side == num_tokens else (1, num_tokens)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model, processor, task tokens and a ``tpo_backbone.json`` (class name and
        ``model_type``, the registry key :meth:`from_pretrained` loads it by) to ``directory``."""
        adapted = [n for n, _ in self.named_parameters() if is_lora_parameter(n)]
        if adapted:
            raise ValueError(
                f"save_pretrained: the backbone carries LoRA adapters ({adapted[0]}, ...); "
                "save the base backbone before apply_lora, and the adapters with the heads"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"class": type(self).__name__, "model_type": self.model_type, **self._save_model(directory)}
        if self.modality_adaptive is not None:
            branches = {k: v.contiguous() for k, v in self.state_dict().items() if ".branches." in k}
            save_file(branches, str(directory / MODALITY_WEIGHTS))
            config["modality_adaptive"] = {"num_modalities": self.modality_adaptive.num_modalities}
        if self.task_tokens is not None:
            self.task_tokens.save_pretrained(directory / TASK_TOKENS_DIR)
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> Backbone:
        """Load a backbone from a local folder: one written by :meth:`save_pretrained`, or a plain
        Hugging Face model folder (``config.json`` + weights + processor files) of a registered
        ``model_type``. The registry picks the class; called on a subclass, the folder must hold
        that class (or one derived from it). ``kwargs`` go to the model's ``from_pretrained``.

        Raises:
            FileNotFoundError: the folder has neither ``tpo_backbone.json`` nor ``config.json``.
            ValueError: its ``model_type`` is not registered (the registered ones are named), or
                it holds another class than ``cls``.
        """
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            hf_config = directory / "config.json"
            if not hf_config.is_file():
                raise FileNotFoundError(
                    f"{config_path}: no {CONFIG_NAME} (nor a Hugging Face config.json); expected a folder "
                    "written by Backbone.save_pretrained or a Hugging Face model folder"
                )
            target = cls._registered(json.loads(hf_config.read_text()).get("model_type"), hf_config)
            return (cls if issubclass(cls, target) else target)._load_hf(directory, **kwargs)
        config = json.loads(config_path.read_text())
        if cls is not Backbone and config.get("class") == cls.__name__:
            target = cls
        elif "model_type" in config:
            target = cls._registered(config["model_type"], config_path)
        else:  # folders written before the registry name only the class
            target = _class_named(config.get("class"), config_path)
            cls._check_holds(target, config_path)
        backbone = target._load(directory, config, **kwargs)
        if "modality_adaptive" in config:
            backbone.enable_modality_adaptive(**config["modality_adaptive"])
            missing, unexpected = backbone.load_state_dict(
                load_file(str(directory / MODALITY_WEIGHTS)), strict=False
            )
            if unexpected or any(".branches." in k for k in missing):
                raise ValueError(
                    f"{directory / MODALITY_WEIGHTS}: does not fit the wrapped model "
                    f"(unexpected {unexpected[:3]})"
                )
        tokens_dir = directory / TASK_TOKENS_DIR
        if tokens_dir.is_dir():
            backbone.task_tokens = TaskTokens.from_pretrained(tokens_dir)
            backbone.task_tokens.bind(backbone.tokenizer)
            backbone.install_injection_hook()
        return backbone

    @classmethod
    def _registered(cls, model_type: str | None, source: Path) -> type[Backbone]:
        """The registered class of ``model_type`` (named in ``source``), checked against ``cls``."""
        try:
            target = backbone_class(model_type)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        cls._check_holds(target, source)
        return target

    @classmethod
    def _check_holds(cls, target: type[Backbone], source: Path) -> None:
        if cls is not Backbone and not issubclass(target, cls):
            raise ValueError(f"{source}: holds a {target.__name__}, not a {cls.__name__}")

    def _save_model(self, directory: Path) -> dict:
        raise NotImplementedError

    @classmethod
    def _load(cls, directory: Path, config: dict, **kwargs) -> Backbone:
        raise NotImplementedError

    @classmethod
    def _load_hf(cls, directory: Path, **kwargs) -> Backbone:
        raise ValueError(
            f"{directory}: {cls.__name__} does not read plain Hugging Face folders; expected a folder "
            "written by Backbone.save_pretrained"
        )


# ---------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Backbone]] = {}
B = TypeVar("B", bound=type[Backbone])


def register_backbone(model_types: str | Sequence[str], cls: B | None = None) -> B | Callable[[B], B]:
    """Make :meth:`Backbone.from_pretrained` load folders of ``model_types`` (the ``model_type``
    of a ``tpo_backbone.json`` or of a Hugging Face ``config.json``) with ``cls``.

    Use it as a call, ``register_backbone(["qwen2_vl"], QwenBackbone)``, or as a class decorator,
    ``@register_backbone("qwen2_vl")``. Registering a class again under its own types is a no-op.

    Raises:
        TypeError: ``cls`` is not a :class:`Backbone` subclass.
        ValueError: a model type is already registered to another class.
    """
    types = (model_types,) if isinstance(model_types, str) else tuple(model_types)

    def add(target: B) -> B:
        if not (isinstance(target, type) and issubclass(target, Backbone)):
            raise TypeError(f"register_backbone: expected a Backbone subclass, got {target!r}")
        taken = {t: _REGISTRY[t] for t in types if _REGISTRY.get(t, target) is not target}
        if taken:
            t, other = next(iter(taken.items()))
            raise ValueError(f"register_backbone: model_type {t!r} is already registered to {other.__name__}")
        _REGISTRY.update(dict.fromkeys(types, target))
        return target

    return add if cls is None else add(cls)


def backbone_class(model_type: str | None) -> type[Backbone]:
    """The class registered for ``model_type``; a ``ValueError`` lists the registered ones."""
    if model_type not in _REGISTRY:
        raise ValueError(
            f"model_type {model_type!r} has no registered backbone; registered: "
            f"{registered_model_types()} (add one with tpo.backbones.register_backbone)"
        )
    return _REGISTRY[model_type]


def registered_model_types() -> list[str]:
    """The model types :func:`backbone_class` knows, sorted."""
    return sorted(_REGISTRY)


def _class_named(name: str | None, source: Path) -> type[Backbone]:
    classes = {c.__name__: c for c in _REGISTRY.values()}
    if name not in classes:
        raise ValueError(f"{source}: unknown backbone class {name!r}; expected one of {sorted(classes)}")
    return classes[name]

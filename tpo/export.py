"""Head export: the trained task parts of a :class:`~tpo.model.TaskModel`, apart from its backbone.

A folder holds ``heads.safetensors`` (heads, task embeddings, query words, LoRA adapters and the
task-token rows of the input embeddings and output projection) and ``tpo_heads.json`` (what
rebuilds them: task tokens, head specs, LoRA options, plus the training options of the module
that saved them). Attach it to another copy of the backbone::

    save_heads(model, folder, loss_weights=..., stage="stage2")    # or TPOModule.save_heads
    model = from_heads(folder, {"pretrained": base})                 # or TPOModule.from_heads

Every file is written to a temporary sibling and renamed into place (:mod:`tpo.io`), so an
interrupted export never leaves a half-written file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tpo.backbones.base import Backbone
from tpo.backbones.factory import create_backbone
from tpo.backbones.lora import is_lora_parameter
from tpo.io import atomic_path, write_text_atomic
from tpo.model import TaskModel

__all__ = [
    "HEADS_CONFIG", "HEADS_WEIGHTS", "from_heads", "head_state", "is_head_key", "load_checkpoint_weights",
    "load_heads", "save_heads", "saved_options",
]

HEADS_WEIGHTS = "heads.safetensors"
HEADS_CONFIG = "tpo_heads.json"
MODEL_OPTIONS = ("heads", "lora", "query_words")


def is_head_key(key: str) -> bool:
    """Whether a :class:`~tpo.model.TaskModel` state-dict key belongs to the export."""
    return key.startswith(("heads.", "backbone.task_tokens.", "query_words.")) or is_lora_parameter(key)


def _token_row_modules(model: TaskModel) -> list[tuple[str, nn.Module]]:
    lm = model.backbone.language_model
    return [("input", lm.get_input_embeddings()), ("output", lm.get_output_embeddings())]


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected a folder written by TPOModule.save_heads")
    return path


def _storage_key(tensor: Tensor) -> tuple:
    return tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)


def _export_keys(model: TaskModel) -> dict[str, Tensor]:
    """The export's entries of ``model.state_dict()``, one name per tensor: of entries that are the
    same tensor (a tied LM head's trainable-token delta is the input embedding's), the first."""
    state, seen = {}, set()
    for key, value in model.state_dict().items():
        if is_head_key(key) and _storage_key(value) not in seen:
            seen.add(_storage_key(value))
            state[key] = value
    return state


def head_state(model: TaskModel) -> dict[str, Tensor]:
    """What :func:`save_heads` writes: heads, task tokens, query words, LoRA adapters and the
    task-token rows of the input embeddings and output projection (``token_rows.input`` /
    ``token_rows.output``, ``(n_tokens, D)``), as contiguous CPU tensors; a tensor shared by
    several entries (tied embeddings) is written once."""
    state = _export_keys(model)
    rows = model.backbone.task_tokens.trainable_token_rows()
    for name, module in _token_row_modules(model):
        weight = getattr(module, "weight", None)
        if weight is None:  # PEFT's trainable-token wrapper: its delta is in the state already
            continue
        state[f"token_rows.{name}"] = weight.detach()[rows]
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_heads(model: TaskModel, directory: str | Path, **training: Any) -> None:
    """Write ``heads.safetensors`` and ``tpo_heads.json`` into ``directory``; ``training``
    (``loss_weights``, ``lm_weight``, ``stage``) is stored in the config beside the model's
    options, for :meth:`TPOModule.from_heads <tpo.TPOModule.from_heads>`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / HEADS_WEIGHTS) as tmp:
        save_file(head_state(model), str(tmp))
    config = {
        "tasks": model.backbone.task_tokens.spec_dicts(),
        "heads": model.head_specs,
        **training,
        "lora": model.lora,
        "hidden_size": model.backbone.hidden_size,
        "query_words": model.query_words is not None,
    }
    write_text_atomic(directory / HEADS_CONFIG, json.dumps(config, indent=2))


def load_heads(model: TaskModel, directory: str | Path) -> None:
    """Load :func:`save_heads` output into ``model`` (same tasks, heads and LoRA layout)."""
    directory = Path(directory)
    state = load_file(str(_existing(directory / HEADS_WEIGHTS)))
    rows = {k: state.pop(k) for k in list(state) if k.startswith("token_rows.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = sorted(k for k in missing if k in _export_keys(model))
    if missing or unexpected:
        raise ValueError(
            f"{directory / HEADS_WEIGHTS}: missing {missing[:5]}, unexpected {unexpected[:5]} "
            "(saved from a module with other tasks, heads or LoRA?)"
        )
    ids = model.backbone.task_tokens.trainable_token_rows()
    with torch.no_grad():
        for name, module in _token_row_modules(model):
            if f"token_rows.{name}" in rows and getattr(module, "weight", None) is not None:
                module.weight[ids] = rows[f"token_rows.{name}"].to(module.weight)


def saved_options(directory: str | Path, backbone: Backbone | Mapping[str, Any]) -> dict[str, Any]:
    """The constructor options an export was saved with: ``backbone`` (built, its task tokens
    added to its tokenizer and embeddings when it lacks them), ``heads``, ``lora``,
    ``query_words`` and the training options stored beside them."""
    directory = Path(directory)
    config = json.loads(_existing(directory / HEADS_CONFIG).read_text())
    backbone = create_backbone(backbone)
    if backbone.hidden_size != config["hidden_size"]:
        raise ValueError(
            f"backbone: hidden size {backbone.hidden_size}, the heads in {directory} were "
            f"trained on {config['hidden_size']}"
        )
    if backbone.task_tokens is None:
        backbone.attach_task_tokens(tasks=config["tasks"])
    options = {k: v for k, v in config.items() if k not in ("tasks", "hidden_size")}
    options.setdefault("query_words", False)
    return {"backbone": backbone, **options}


def from_heads(directory: str | Path, backbone: Backbone | Mapping[str, Any]) -> TaskModel:
    """A :class:`~tpo.model.TaskModel` of a copy of the backbone that lacks the heads, with the
    export attached: task tokens added, LoRA applied as it was, weights and token rows loaded."""
    options = saved_options(directory, backbone)
    model = TaskModel(options["backbone"], **{k: options[k] for k in MODEL_OPTIONS})
    load_heads(model, directory)
    return model


def load_checkpoint_weights(module: nn.Module, checkpoint: str | Path) -> None:
    """Load the ``state_dict`` of a Lightning checkpoint into ``module`` (``init_from``: every
    weight must fit; the optimizer state is not read)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"init_from: {path} does not exist (expected a Lightning .ckpt)")
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"init_from {path}: weights do not fit this module (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); the stages must share backbone, heads and LoRA"
        )

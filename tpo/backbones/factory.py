"""Build a backbone from a JSON/YAML-able spec (what configs and ``TPOModule`` take).

Two registries answer a spec: named builders (:data:`BACKBONE_BUILDERS`, e.g. ``tiny_llava``) for
``{"name": ...}``, and the backbone-class registry of :mod:`tpo.backbones.base` (by the folder's
``model_type``) for ``{"pretrained": dir}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tpo.arguments import unknown_arguments
from tpo.backbones.base import Backbone
from tpo.backbones.tiny import tiny_llava, tiny_videochat
from tpo.backbones.tiny_internvl import tiny_internvl
from tpo.backbones.tiny_qwen_vl import tiny_qwen_vl

__all__ = ["BACKBONE_BUILDERS", "create_backbone", "register_builder"]


BACKBONE_BUILDERS: dict[str, Callable[..., Backbone]] = {
    "tiny_llava": tiny_llava,
    "tiny_videochat": tiny_videochat,
    "tiny_internvl": tiny_internvl,
    "tiny_qwen_vl": tiny_qwen_vl,
}


def register_builder(name: str, builder: Callable[..., Backbone]) -> None:
    """Make ``{"name": name, **kwargs}`` specs build with ``builder(**kwargs)``. (A new backbone
    class is registered for its folders with :func:`tpo.backbones.register_backbone`.)"""
    BACKBONE_BUILDERS[name] = builder


def create_backbone(spec: Backbone | Mapping[str, Any]) -> Backbone:
    """A backbone from a spec.

    Specs:
        ``{"name": "tiny_llava", "kind": "llava_onevision", ...}`` — a registered builder;
        ``{"pretrained": dir, "tasks": [...]}`` — a folder written by ``Backbone.save_pretrained``
        or a plain Hugging Face folder of a registered ``model_type`` (LLaVA, Qwen-VL, InternVL); task tokens
        are attached when it has none. Other keys go to the model's ``from_pretrained``.
        Either may add ``"modality_adaptive": true`` (or a number of modalities) for mPLUG-Owl2's
        modality-adaptive layers.
    """
    if isinstance(spec, Backbone):
        return spec
    spec = dict(spec)
    adaptive = spec.pop("modality_adaptive", False)
    backbone = _build(spec)
    if adaptive and backbone.modality_adaptive is None:
        backbone.enable_modality_adaptive(2 if adaptive is True else int(adaptive))
    return backbone


def _build(spec: dict[str, Any]) -> Backbone:
    if "pretrained" in spec:
        directory = Path(spec.pop("pretrained"))
        tasks = spec.pop("tasks", None)
        backbone = Backbone.from_pretrained(directory, **spec)
        if backbone.task_tokens is None:
            backbone.attach_task_tokens(tasks=tasks)
        return backbone
    name = spec.pop("name", None)
    if name not in BACKBONE_BUILDERS:
        raise ValueError(
            f"backbone spec: 'name' must be one of {sorted(BACKBONE_BUILDERS)} "
            f"(or give 'pretrained': dir), got {name!r}"
        )
    builder = BACKBONE_BUILDERS[name]
    unknown, valid = unknown_arguments(builder, spec)
    if unknown:
        raise ValueError(
            f"backbone spec: {name!r} takes no {unknown}; its arguments: {valid} "
            "(plus 'modality_adaptive')"
        )
    return builder(**spec)

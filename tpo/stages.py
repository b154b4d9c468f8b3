"""Training-stage presets (TPO, Tables 17/18): what trains, at which learning rate.

A preset is declarative: named parameter groups, each a list of regular expressions searched in
the parameter names of the module being trained (``backbone.…``, ``heads.…`` of a
:class:`~tpo.model.TaskModel`, or ``model.backbone.…`` of a ``TPOModule``), with a learning
rate and weight decay. The first group whose pattern matches a parameter takes it; parameters no
group takes, or that a ``frozen`` pattern matches, do not train.

========  ==================================================  ===============================
stage     trains                                              learning rates
========  ==================================================  ===============================
stage1    LoRA of the LLM and the task-token rows             LoRA 2e-5
stage2    + heads and task embeddings (encoders frozen),      heads / task emb. 1e-4,
          + the visual branches of modality-adaptive layers   temporal token 2e-4, branches 2e-5
stage3    + vision encoder and connector (not frozen experts) vision / connector 2e-5
full      + every LLM weight (no LoRA; small models, the demo)    LLM 2e-5
========  ==================================================  ===============================
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from tpo.backbones.lora import is_lora_parameter

__all__ = ["ParamGroupSpec", "StagePreset", "STAGES", "get_stage"]


@dataclass(frozen=True)
class ParamGroupSpec:
    """One optimizer parameter group.

    Attributes:
        name: group name (shown in logs as ``lr-<name>``).
        patterns: regular expressions; a parameter joins when one matches its name (``re.search``).
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay.
        predicate: a test of the name that also lets a parameter join (the LoRA group uses
            :func:`~tpo.backbones.lora.is_lora_parameter`).
    """

    name: str
    patterns: tuple[str, ...]
    lr: float
    weight_decay: float = 0.0
    predicate: Callable[[str], bool] | None = None

    def matches(self, name: str) -> bool:
        if self.predicate is not None and self.predicate(name):
            return True
        return any(re.search(p, name) for p in self.patterns)

    def describe(self) -> list[str]:
        """The patterns, and the predicate by name, for messages."""
        return [*self.patterns, *([self.predicate.__name__] if self.predicate is not None else [])]


@dataclass(frozen=True)
class StagePreset:
    """A training stage: parameter groups in priority order plus never-trained patterns."""

    name: str
    groups: tuple[ParamGroupSpec, ...]
    frozen: tuple[str, ...] = field(default_factory=tuple)

    def assign(self, module: nn.Module) -> dict[str, list[str]]:
        """Set ``requires_grad`` on every parameter of ``module`` and say which group took it.

        Returns:
            ``{group name: [parameter names]}`` for the groups that took at least one parameter.

        Raises:
            ValueError: no parameter of ``module`` trains in this stage.
        """
        taken: dict[str, list[str]] = {}
        for name, param in module.named_parameters():
            group = None
            if not any(re.search(p, name) for p in self.frozen):
                group = next((g for g in self.groups if g.matches(name)), None)
            param.requires_grad_(group is not None)
            if group is not None:
                taken.setdefault(group.name, []).append(name)
        if not taken:
            patterns = [p for g in self.groups for p in g.describe()]
            raise ValueError(
                f"stage {self.name!r}: no parameter matches {patterns}; for stage1 and "
                "stage2 apply LoRA to the backbone first (tpo.backbones.lora.apply_lora)"
            )
        return taken

    def param_groups(self, module: nn.Module) -> list[dict]:
        """Optimizer parameter groups (``params``, ``lr``, ``weight_decay``, ``name``) for ``module``;
        sets ``requires_grad`` as :meth:`assign` does."""
        taken = self.assign(module)
        params = dict(module.named_parameters())
        return [
            {
                "name": g.name,
                "params": [params[n] for n in taken[g.name]],
                "lr": g.lr,
                "weight_decay": g.weight_decay,
            }
            for g in self.groups
            if g.name in taken
        ]


_LORA = ParamGroupSpec("lora", (), lr=2e-5, predicate=is_lora_parameter)
_TEMPORAL_TOKEN = ParamGroupSpec("temporal_token", (r"task_tokens\.embeddings\.temporal$",), lr=2e-4)
_TASK_EMBEDDINGS = ParamGroupSpec("task_embeddings", (r"task_tokens\.",), lr=1e-4)
_MODALITY = ParamGroupSpec("modality_branches", (r"\.branches\.\d+\.",), lr=2e-5)
_HEADS = ParamGroupSpec(
    "heads", (r"^(model\.)?heads\.", r"^(model\.)?query_words\."), lr=1e-4, weight_decay=0.01
)
_VISION = ParamGroupSpec(
    "vision",
    (
        r"\.vision_tower\.",
        r"\.multi_modal_projector\.",
        r"\.vision_resampler\.",
        r"^(model\.)?backbone\.(vision|vision_norm|qformer|projection)\.",
        r"^(model\.)?backbone\.(queries|temporal_embed)$",
    ),
    lr=2e-5,
    weight_decay=0.01,
)
_LLM = ParamGroupSpec(
    "llm",
    (r"\.language_model\.", r"\.lm_head\.", r"^(model\.)?backbone\.llm\."),
    lr=2e-5,
    weight_decay=0.01,
)
_FROZEN_EXPERTS = (r"\.sam2\.",)

STAGES: dict[str, StagePreset] = {
    "stage1": StagePreset("stage1", (_LORA,), frozen=_FROZEN_EXPERTS),
    "stage2": StagePreset(
        "stage2", (_TEMPORAL_TOKEN, _TASK_EMBEDDINGS, _HEADS, _LORA, _MODALITY), frozen=_FROZEN_EXPERTS
    ),
    "stage3": StagePreset(
        "stage3",
        (_TEMPORAL_TOKEN, _TASK_EMBEDDINGS, _HEADS, _LORA, _MODALITY, _VISION),
        frozen=_FROZEN_EXPERTS,
    ),
    "full": StagePreset(
        "full",
        (_TEMPORAL_TOKEN, _TASK_EMBEDDINGS, _HEADS, _LORA, _MODALITY, _VISION, _LLM),
        frozen=_FROZEN_EXPERTS,
    ),
}


def get_stage(stage: str | StagePreset) -> StagePreset:
    """A preset by name (``stage1``/``stage2``/``stage3``) or the preset itself."""
    if isinstance(stage, StagePreset):
        return stage
    if stage not in STAGES:
        raise ValueError(f"stage: expected one of {sorted(STAGES)}, got {stage!r}")
    return STAGES[stage]

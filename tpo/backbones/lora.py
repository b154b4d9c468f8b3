"""Optional LoRA on the LLM of a backbone, through PEFT (the ``peft`` extra).

Adapters are injected in place (``peft.inject_adapter_in_model``), so the backbone keeps its
model objects. The base weights are frozen; the LoRA matrices, the rows of the task tokens in the
input embeddings and output projection (PEFT's trainable tokens) and the task embeddings stay
trainable.

:func:`is_lora_parameter` is the one test of "does PEFT own this parameter" in the library: the
stage presets, the module's head export and :meth:`Backbone.save_pretrained` all ask it.
:func:`without_adapters` shows the base model under the adapters (for saving it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from tpo.backbones.base import Backbone

__all__ = ["apply_lora", "DEFAULT_LORA_TARGETS", "is_lora_parameter", "without_adapters"]

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_PEFT_PARAMETER = re.compile(r"(?:^|\.)(?:lora_[A-Za-z_]+|trainable_tokens_delta|modules_to_save)(?:\.|$)")


def is_lora_parameter(name: str) -> bool:
    """Whether a parameter (or state-dict key) is one PEFT adds and trains: a LoRA matrix
    (``lora_A``, ``lora_B``, ``lora_embedding_A/B``, DoRA's ``lora_magnitude_vector``), a trainable
    token delta (``trainable_tokens_delta``) or a ``modules_to_save`` copy.

    A dotted component of ``name`` must be one of those, so the base weights PEFT wraps
    (``base_layer``, ``original_module``, ``token_adapter.base_layer``) and look-alike names of
    the user's own modules (``flora_proj``) are not adapter parameters.
    """
    return _PEFT_PARAMETER.search(name) is not None


@contextmanager
def without_adapters(root: nn.Module) -> Iterator[None]:
    """Inside the context, the PEFT layers of ``root`` are replaced by the layers they wrap (LoRA
    linears by their base linear, trainable-token and ``modules_to_save`` wrappers by the original
    module), whose weights PEFT leaves untouched: ``root`` is the base model. Restored on exit.

    Raises:
        ValueError: a LoRA layer whose weights are merged into its base layer.
    """
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


def apply_lora(
    backbone: Backbone,
    *,
    target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    train_token_rows: bool = True,
) -> list[str]:
    """Put LoRA adapters on the named linear layers of the backbone's LLM and freeze the rest.

    Args:
        backbone: a backbone; only its language model gets adapters (never the vision tower).
        target_modules: names of the LLM's linear layers to adapt (``q_proj``, ``v_proj``...).
        r: LoRA rank.
        alpha: LoRA scaling numerator (scale = alpha / r).
        dropout: dropout on the LoRA input.
        train_token_rows: keep the task tokens' rows of the input embeddings and of the output
            projection trainable (PEFT ``trainable_token_indices``).

    Returns:
        Names of the backbone's trainable parameters after the call.

    Raises:
        ImportError: ``peft`` is not installed (``pip install "tpo[peft]"``).
        ValueError: no module of the LLM matches ``target_modules``.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError("apply_lora needs PEFT: pip install 'tpo[peft]'") from err
    model, scope = backbone.lora_scope()
    names = "|".join(re.escape(t) for t in target_modules)
    pattern = rf"^{scope}(?:.*\.)?({names})$"
    if not any(re.match(pattern, n) for n, m in model.named_modules() if isinstance(m, nn.Linear)):
        raise ValueError(
            f"target_modules: no linear layer of the LLM matches {list(target_modules)} (pattern {pattern!r})"
        )
    token_indices = None
    if train_token_rows and backbone.task_tokens is not None:
        rows = backbone.task_tokens.trainable_token_rows().tolist()
        token_indices = {_module_name(model, backbone.language_model.get_input_embeddings()): rows}
        output = backbone.language_model.get_output_embeddings()
        if output is not None and output.weight is not backbone.language_model.get_input_embeddings().weight:
            token_indices[_module_name(model, output)] = rows
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=pattern,
        trainable_token_indices=token_indices,
    )
    inject_adapter_in_model(config, model)
    for name, param in backbone.named_parameters():
        param.requires_grad_(is_lora_parameter(name) or name.startswith("task_tokens."))
    backbone.install_injection_hook()
    return [n for n, p in backbone.named_parameters() if p.requires_grad]


def _module_name(root: nn.Module, module: nn.Module) -> str:
    for name, candidate in root.named_modules():
        if candidate is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}")

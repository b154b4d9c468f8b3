"""Modality-adaptive decoder layers (mPLUG-Owl2, arXiv 2311.04257), added to a Hugging Face LLM.

mPLUG-Owl2 gives each modality its own layer norms and key/value projections in every decoder
layer while the query, output projection and MLP stay shared. :meth:`ModalityAdaptive.wrap`
does this in place on a LLaMA / Mistral / Qwen2 / Qwen3 model (a ``*ForCausalLM``, its base model, or a
LLaVA-family model whose language model is one of these):

- ``input_layernorm`` and ``post_attention_layernorm`` become :class:`ModalityNorm`;
- ``self_attn.k_proj`` and ``self_attn.v_proj`` become :class:`ModalityLinear` (still an
  ``nn.Linear``, so PEFT LoRA can target ``k_proj`` / ``v_proj`` after wrapping).

In both the original parameters keep their names as the text branch (modality 0) and modality
``m`` lives under ``<module>.branches.<m>``, initialised as a copy of the original.

No transformers class or layer signature changes. The replaced modules read the modality of
each token from the handle: a forward pre-hook on the decoder stack's parent records, for every
forward, the slice of the indicators that covers the tokens of that forward (the cache tells
where they start), so cached generation and full recomputation see the same modalities.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["ModalityAdaptive", "ModalityLinear", "ModalityNorm", "visual_indicators"]


def visual_indicators(input_ids: Tensor, visual_token_ids: Sequence[int] | Tensor) -> Tensor:
    """Modality indicators from the positions of visual placeholder tokens.

    Args:
        input_ids: ``(B, L)`` token ids, visual placeholders already expanded (one id per visual
            token, as LLaVA processors and :class:`~tpo.backbones.VideoChatProcessor` produce).
        visual_token_ids: ids that mark visual tokens (``<image>``, ``<video>``).

    Returns:
        ``(B, L)`` long: 1 where ``input_ids`` is a visual token id, 0 elsewhere.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids: expected (B, L) token ids, got shape {tuple(input_ids.shape)}")
    ids = torch.as_tensor(visual_token_ids, dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, ids).long()


@dataclass
class _Routing:
    """The modality of each token of the forward being run.

    Attributes:
        shape: ``(B, S)`` of the tokens this forward processes.
        present: modalities that occur, ascending.
        masks: ``{modality: (B, S) bool}`` for each present modality (empty when only one is).
    """

    shape: tuple[int, int]
    present: tuple[int, ...]
    masks: dict[int, Tensor]


def _route(routing: _Routing, x: Tensor, branches: Sequence[Callable[[Tensor], Tensor]]) -> Tensor:
    """Apply ``branches[m]`` to the tokens of modality ``m`` of ``x (B, S, D)``.

    A branch sees only its own tokens, so an absent modality's parameters get no gradient.
    """
    if x.shape[:2] != routing.shape:
        raise ValueError(
            f"hidden_states: expected (B, S, D) with (B, S) = {routing.shape} from the "
            f"modality indicators, got {tuple(x.shape)}"
        )
    if len(routing.present) == 1:
        return branches[routing.present[0]](x)
    out = None
    for m in routing.present:
        mask = routing.masks[m]
        y = branches[m](x[mask])  # (n_m, F)
        if out is None:
            out = y.new_zeros(*x.shape[:2], y.shape[-1])
        out = out.index_put((mask,), y)
    return out


def _in_backward() -> bool:
    """Whether the autograd engine is running a backward pass on this thread."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


class _State:
    """Indicators shared by the handle and the replaced modules (not an ``nn.Module``)."""

    def __init__(self, num_modalities: int) -> None:
        self.num_modalities = num_modalities
        self.explicit: Tensor | None = None
        self.auto: Tensor | None = None
        self.routing: _Routing | None = None

    def routing_for(self, x: Tensor) -> _Routing:
        """The routing of the current forward, or one from the indicators at offset 0 outside.

        Raises:
            RuntimeError: called during a backward pass (a checkpointed layer recomputed without
                :meth:`ModalityAdaptive.checkpoint_context`, which would lose the modalities).
        """
        if self.routing is not None:
            return self.routing
        if _in_backward():
            raise RuntimeError(
                "a modality-adaptive layer is recomputed in backward without its "
                "modalities: enable checkpointing with context_fn="
                "ma.checkpoint_context (see ModalityAdaptive.checkpoint_context)"
            )
        return self.make_routing(x.shape[0], x.shape[1], offset=0, device=x.device)

    def make_routing(self, batch: int, length: int, *, offset: int, device: torch.device) -> _Routing:
        """Routing of ``length`` tokens starting at sequence position ``offset``.

        Explicit indicators ``(B0, L0)`` cover positions ``0..L0-1``; positions past ``L0`` are text.
        Indicators from ``input_ids`` (auto mode) cover exactly the tokens of the forward.
        """
        if self.explicit is not None:
            ind = self.explicit.to(device)
            ind = ind[:, offset : offset + length]
            if ind.shape[1] < length:
                ind = F.pad(ind, (0, length - ind.shape[1]))
        elif self.auto is not None:
            if self.auto.shape[1] != length:
                raise ValueError(
                    f"input_ids: {self.auto.shape[1]} tokens give the modality "
                    f"indicators but the language model reads {length}; set them "
                    "with ModalityAdaptive.indicators"
                )
            ind = self.auto.to(device)
        else:
            return _Routing((batch, length), (0,), {})
        if ind.shape[0] != batch:
            if ind.shape[0] == 0 or batch % ind.shape[0]:
                raise ValueError(
                    f"modality indicators: batch of {ind.shape[0]} for a forward of "
                    f"{batch} sequences (expected the same, or a divisor for expanded "
                    "generation)"
                )
            ind = ind.repeat_interleave(batch // ind.shape[0], dim=0)
        present = tuple(torch.unique(ind).tolist())
        if present in ((), (0,)):
            return _Routing((batch, length), (0,), {})
        masks = {m: ind == m for m in present} if len(present) > 1 else {}
        return _Routing((batch, length), present, masks)


class ModalityNorm(nn.Module):
    """Per-modality copies of a layer norm: ``(B, S, D) -> (B, S, D)``.

    The original norm's parameters stay where they were (``input_layernorm.weight``) as the text
    branch (modality 0) and it still computes that branch; ``branches[str(m)]`` is a deep copy for
    modality ``m >= 1``. So a wrapped model's text branch loads from, and saves to, the same keys
    as the unwrapped model.

    Args:
        original: the norm to replace (a module without submodules, e.g. ``LlamaRMSNorm``).
        num_modalities: number of branches.
    """

    def __init__(self, original: nn.Module, *, num_modalities: int, state: _State) -> None:
        if next(original.children(), None) is not None:
            raise ValueError(f"{type(original).__name__}: expected a layer norm without submodules")
        super().__init__()
        for name, param in original.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in original.named_buffers(recurse=False):
            self.register_buffer(name, buffer)
        self.branches = nn.ModuleDict({str(m): copy.deepcopy(original) for m in range(1, num_modalities)})
        object.__setattr__(self, "_template", original)  # not a submodule: only its forward is used
        self._state = state

    def _text(self, x: Tensor) -> Tensor:
        tensors = dict(self.named_parameters(recurse=False))
        tensors.update(self.named_buffers(recurse=False))
        return functional_call(self._template, tensors, (x,))

    def forward(self, hidden_states: Tensor) -> Tensor:
        branches = [self._text, *self.branches.values()]
        return _route(self._state.routing_for(hidden_states), hidden_states, branches)

    def branch_parameters(self, way: int) -> list[nn.Parameter]:
        if way == 0:
            return list(self.parameters(recurse=False))
        return list(self.branches[str(way)].parameters())


class ModalityLinear(nn.Linear):
    """Per-modality copies of a linear projection: ``(B, S, D_in) -> (B, S, D_out)``.

    Its own ``weight`` / ``bias`` are the text branch (modality 0), so it is still an ``nn.Linear``
    for PEFT (a LoRA adapter on it is shared by all modalities); ``branches[str(m)]`` is modality
    ``m >= 1``.

    Args:
        original: the projection to replace; every branch starts as a copy of its weights.
        num_modalities: number of branches.
    """

    def __init__(self, original: nn.Linear, *, num_modalities: int, state: _State) -> None:
        if type(original) is not nn.Linear:
            raise ValueError(
                f"{type(original).__name__}: expected a plain nn.Linear key/value "
                "projection; wrap the model with ModalityAdaptive before adding "
                "adapters (LoRA) or quantising it"
            )
        super().__init__(
            original.in_features,
            original.out_features,
            bias=original.bias is not None,
            device=original.weight.device,
            dtype=original.weight.dtype,
        )
        self.weight = original.weight
        self.bias = original.bias
        self.branches = nn.ModuleDict({str(m): copy.deepcopy(original) for m in range(1, num_modalities)})
        self._state = state

    def forward(self, hidden_states: Tensor) -> Tensor:
        branches = [lambda x: F.linear(x, self.weight, self.bias), *self.branches.values()]
        return _route(self._state.routing_for(hidden_states), hidden_states, branches)

    def branch_parameters(self, way: int) -> list[nn.Parameter]:
        if way == 0:
            return [p for p in (self.weight, self.bias) if p is not None]
        return list(self.branches[str(way)].parameters())


def _decoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every decoder layer with the two norms and k/v projections."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if hasattr(m, "input_layernorm")
        and hasattr(m, "post_attention_layernorm")
        and hasattr(getattr(m, "self_attn", None), "k_proj")
        and hasattr(m.self_attn, "v_proj")
    ]


class ModalityAdaptive:
    """Handle of a model whose decoder layers were made modality-adaptive.

    Build it with :meth:`wrap`. Token modalities reach the layers through :meth:`indicators`
    (or, with ``visual_token_ids``, from the ``input_ids`` of each forward); without either every
    token is text, so a wrapped model behaves exactly as before on text.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_modalities: int,
        norms: list[ModalityNorm],
        projections: list[ModalityLinear],
        text_models: list[nn.Module],
        state: _State,
        visual_token_ids: Tensor | None,
    ) -> None:
        self.model = model
        self.num_modalities = num_modalities
        self.norms = norms
        self.projections = projections
        self._state = state
        self._visual_token_ids = visual_token_ids
        for text_model in text_models:
            signature = inspect.signature(text_model.forward)
            text_model.register_forward_pre_hook(self._make_text_pre_hook(signature), with_kwargs=True)
            text_model.register_forward_hook(self._clear_routing, always_call=True)
        if visual_token_ids is not None:
            model.register_forward_pre_hook(self._auto_pre_hook, with_kwargs=True)
            model.register_forward_hook(self._clear_auto, always_call=True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def wrap(
        cls, model: nn.Module, num_modalities: int = 2, *, visual_token_ids: Sequence[int] | None = None
    ) -> ModalityAdaptive:
        """Make every decoder layer of ``model`` modality-adaptive, in place.

        Args:
            model: a Hugging Face LLaMA / Mistral / Qwen2 model (``*ForCausalLM`` or base model), or
                a LLaVA-family model whose language model is one of these.
            num_modalities: number of branches (2: text 0, visual 1).
            visual_token_ids: when given, each forward of ``model`` that receives ``input_ids``
                and runs outside :meth:`indicators` takes its indicators from them
                (:func:`visual_indicators`); forwards fed ``inputs_embeds`` only are all text.

        Returns:
            The handle. Right after wrapping the model computes exactly what it did before.

        Raises:
            ValueError: ``num_modalities < 2``; no decoder layer found; the model is already
                wrapped; a key/value projection is not a plain ``nn.Linear``.
        """
        if num_modalities < 2:
            raise ValueError(f"num_modalities: expected >= 2, got {num_modalities}")
        layers = _decoder_layers(model)
        if not layers:
            raise ValueError(
                f"model: {type(model).__name__} has no decoder layer with "
                "input_layernorm, post_attention_layernorm and self_attn.k_proj/v_proj"
            )
        if any(isinstance(layer.input_layernorm, ModalityNorm) for _, layer in layers):
            raise ValueError(f"model: {type(model).__name__} is already modality-adaptive")
        state = _State(num_modalities)
        norms, projections = [], []
        for _, layer in layers:
            for attr in ("input_layernorm", "post_attention_layernorm"):
                norm = ModalityNorm(getattr(layer, attr), num_modalities=num_modalities, state=state)
                setattr(layer, attr, norm)
                norms.append(norm)
            for attr in ("k_proj", "v_proj"):
                proj = ModalityLinear(
                    getattr(layer.self_attn, attr), num_modalities=num_modalities, state=state
                )
                setattr(layer.self_attn, attr, proj)
                projections.append(proj)
        parents = {name.rsplit(".", 2)[0] if name.count(".") >= 2 else "" for name, _ in layers}
        text_models = [model.get_submodule(p) for p in sorted(parents)]
        ids = None if visual_token_ids is None else torch.as_tensor(list(visual_token_ids), dtype=torch.long)
        return cls(
            model,
            num_modalities=num_modalities,
            norms=norms,
            projections=projections,
            text_models=text_models,
            state=state,
            visual_token_ids=ids,
        )

    # ------------------------------------------------------------------ indicators
    @contextmanager
    def indicators(self, modality: Tensor) -> Iterator[None]:
        """Token modalities for the forwards (and ``generate``) run inside this context.

        Args:
            modality: ``(B, L)`` long, 0 text, 1 visual (``< num_modalities``), aligned with the
                sequence positions ``0..L-1`` (the ``input_ids`` of the prompt). Positions past
                ``L`` (tokens generated on a KV cache) are text. A forward over ``k * B``
                sequences (beams, ``num_return_sequences``) repeats each row ``k`` times.

        Raises:
            ValueError: wrong shape, non-integer dtype, or values outside ``[0, num_modalities)``.
        """
        if not isinstance(modality, Tensor) or modality.ndim != 2:
            shape = tuple(modality.shape) if isinstance(modality, Tensor) else type(modality).__name__
            raise ValueError(f"modality: expected a (B, L) long tensor, got {shape}")
        if modality.dtype.is_floating_point or modality.dtype.is_complex:
            raise ValueError(f"modality: expected an integer (long) tensor, got {modality.dtype}")
        modality = modality.long()
        if modality.numel() and (modality.min() < 0 or modality.max() >= self.num_modalities):
            raise ValueError(
                f"modality: values must lie in [0, {self.num_modalities}), got "
                f"[{int(modality.min())}, {int(modality.max())}]"
            )
        previous, self._state.explicit = self._state.explicit, modality
        try:
            yield
        finally:
            self._state.explicit = previous

    def _make_text_pre_hook(self, signature: inspect.Signature):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            bound = signature.bind_partial(*args, **kwargs).arguments
            tokens = bound.get("inputs_embeds")
            if tokens is None:
                tokens = bound.get("input_ids")
            if tokens is None:
                self._state.routing = None
                return
            past = bound.get("cache")  # transformers >= 5.24 (``past_key_values`` before)
            if past is None:
                past = bound.get("past_key_values")
            offset = past.get_seq_length() if past is not None else 0
            self._state.routing = self._state.make_routing(
                tokens.shape[0], tokens.shape[1], offset=offset, device=tokens.device
            )

        return hook

    def _clear_routing(self, module: nn.Module, args: tuple, output) -> None:
        self._state.routing = None

    def _auto_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(input_ids, Tensor) and input_ids.ndim == 2 and not input_ids.is_floating_point():
            self._state.auto = visual_indicators(input_ids, self._visual_token_ids)
        else:
            self._state.auto = None

    def _clear_auto(self, module: nn.Module, args: tuple, output) -> None:
        self._state.auto = None

    # ------------------------------------------------------------------ parameters
    def branch_parameters(self, way: int) -> list[nn.Parameter]:
        """The parameters of modality ``way`` in every wrapped layer (norms, then k/v).

        Branch 0 holds the model's original norm and k/v parameters.
        """
        if not 0 <= way < self.num_modalities:
            raise ValueError(f"way: expected 0 <= way < {self.num_modalities}, got {way}")
        return [p for module in (*self.norms, *self.projections) for p in module.branch_parameters(way)]

    def named_branch_parameters(self, way: int) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of :meth:`branch_parameters`, names relative to the wrapped model."""
        wanted = {id(p) for p in self.branch_parameters(way)}
        return [(n, p) for n, p in self.model.named_parameters(remove_duplicate=False) if id(p) in wanted]

    def checkpoint_context(self):
        """``context_fn`` for non-reentrant gradient checkpointing: the recomputation in backward
        sees the modalities of the original forward.

        Use ``model.activation_checkpointing_enable({"use_reentrant": False, "context_fn":
        ma.checkpoint_context})`` (transformers >= 5; ``gradient_checkpointing_kwargs`` before).
        """
        routing = self._state.routing

        @contextmanager
        def recompute() -> Iterator[None]:
            previous, self._state.routing = self._state.routing, routing
            try:
                yield
            finally:
                self._state.routing = previous

        return nullcontext(), recompute()

"""Task tokens: the special tokens of TPO and their learnable task embeddings.

A task is announced in the text by a *begin* token the language model learns to emit
(``<time_begin>``), followed by a *placeholder* token (``<temp>``) whose input embedding is
replaced by a learnable task embedding. The LLM's last hidden state at the placeholder is the
task embedding a head consumes. Some tasks also take an *input* token (``<track_box>``) whose
embedding is a learned encoding of a box given in the prompt.

Injection goes through ``inputs_embeds``: no part of transformers is patched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from tpo.tasks.registry import TaskSpec, get_task_spec, list_tasks

__all__ = ["BoxEncoder", "TaskGather", "TaskTokens"]


@dataclass
class TaskGather:
    """Hidden states gathered at one task's placeholder tokens.

    Attributes:
        embeds: ``(N, D)`` hidden states, in row-major order of (sample, position).
        batch_index: ``(N,)`` long, the sample each row comes from.
        position: ``(N,)`` long, the sequence position of each row in the hidden states it was
            gathered from: ``embeds == hidden_states[batch_index, position]``.
    """

    embeds: Tensor
    batch_index: Tensor
    position: Tensor

    def __len__(self) -> int:
        return self.embeds.shape[0]


class BoxEncoder(nn.Module):
    """MLP from a normalised ``(cx, cy, w, h)`` box to an embedding.

    ``(K, 4)`` in [0, 1] -> ``(K, hidden_size)``.
    """

    def __init__(self, *, hidden_size: int, mlp_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, hidden_size))

    def forward(self, boxes: Tensor) -> Tensor:
        return self.mlp(boxes)


def _resolve_specs(tasks: Sequence[str | Mapping] | None) -> list[TaskSpec]:
    if tasks is None:
        return [get_task_spec(name) for name in list_tasks()]
    specs = []
    for task in tasks:
        if isinstance(task, str):
            specs.append(get_task_spec(task))
        elif isinstance(task, TaskSpec):
            specs.append(task)
        else:
            specs.append(TaskSpec(**task))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks: duplicate task names in {names}")
    return specs


class TaskTokens(nn.Module, PyTorchModelHubMixin):
    """Learnable task embeddings and the special tokens that carry them.

    Args:
        hidden_size: the LLM's hidden size ``D``.
        tasks: task names from the registry, or task specs as dicts
            (``{"name", "begin_token", "placeholder_token", "input_token"}``); default: every
            registered task.
        init_std: standard deviation of the normal initialisation of the task embeddings.
        box_mlp_dim: hidden width of the :class:`BoxEncoder` for input boxes.

    Token ids are recorded by :meth:`add_to` (or :meth:`bind` for a tokenizer that already has
    the tokens) and saved with the module's state.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        tasks: Sequence[str | Mapping] | None = None,
        init_std: float = 0.02,
        box_mlp_dim: int = 256,
    ) -> None:
        super().__init__()
        self.specs: dict[str, TaskSpec] = {s.name: s for s in _resolve_specs(tasks)}
        self.hidden_size = hidden_size
        self.embeddings = nn.ParameterDict(
            {name: nn.Parameter(torch.randn(hidden_size) * init_std) for name in self.specs}
        )
        self.box_encoder = BoxEncoder(hidden_size=hidden_size, mlp_dim=box_mlp_dim)
        # (num_tasks, 3): begin, placeholder, input token id per task; -1 where unset.
        self.register_buffer("token_ids", torch.full((len(self.specs), 3), -1, dtype=torch.long))

    @property
    def task_names(self) -> list[str]:
        return list(self.specs)

    @property
    def is_bound(self) -> bool:
        """Whether token ids have been recorded from a tokenizer."""
        return bool((self.token_ids[:, :2] >= 0).all())

    def spec_dicts(self) -> list[dict]:
        """The task specs as JSON-able dicts (the ``tasks`` argument that rebuilds this module)."""
        return [asdict(s) for s in self.specs.values()]

    # ------------------------------------------------------------------ tokenizer side
    def bind(self, tokenizer) -> None:
        """Record the token ids from a tokenizer that already has every task token.

        Raises:
            ValueError: naming the task tokens the tokenizer lacks.
        """
        vocab = tokenizer.get_vocab()
        missing = [tok for s in self.specs.values() for tok in s.tokens if tok not in vocab]
        if missing:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} lacks the task tokens {missing}; "
                "expected them as added special tokens (call TaskTokens.add_to(tokenizer, model))"
            )
        ids = [
            [
                vocab[s.begin_token],
                vocab[s.placeholder_token],
                vocab[s.input_token] if s.input_token else -1,
            ]
            for s in self.specs.values()
        ]
        self.token_ids.copy_(torch.tensor(ids, dtype=torch.long))

    def add_to(self, tokenizer, model: nn.Module | None = None) -> int:
        """Add the task tokens to ``tokenizer`` and grow ``model``'s embeddings to match.

        New rows of the input embeddings and of the output projection (when it is not tied)
        are set to the mean of the old rows, as TPO initialises them.

        Args:
            tokenizer: a Hugging Face tokenizer (or a processor with ``.tokenizer``).
            model: the model whose ``resize_token_embeddings`` follows the tokenizer; ``None``
                to only touch the tokenizer.

        Returns:
            The number of tokens added to the tokenizer.
        """
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        tokens = [tok for s in self.specs.values() for tok in s.tokens]
        added = tokenizer.add_special_tokens(
            {"additional_special_tokens": tokens}, replace_extra_special_tokens=False
        )
        if model is not None:
            resize_with_mean_rows(model, len(tokenizer))
        self.bind(tokenizer)
        return added

    def _require_bound(self) -> None:
        if not self.is_bound:
            raise ValueError(
                "TaskTokens has no token ids: call add_to(tokenizer, model) or "
                "bind(tokenizer) first"
            )

    @property
    def begin_ids(self) -> Tensor:
        """``(num_tasks,)`` ids of the task-begin tokens, in :attr:`task_names` order."""
        return self.token_ids[:, 0]

    @property
    def placeholder_ids(self) -> Tensor:
        """``(num_tasks,)`` ids of the placeholder tokens, in :attr:`task_names` order."""
        return self.token_ids[:, 1]

    @property
    def input_ids_of_boxes(self) -> Tensor:
        """Ids of the input-box tokens (``<track_box>``) of the tasks that have one."""
        ids = self.token_ids[:, 2]
        return ids[ids >= 0]

    # ------------------------------------------------------------------ tensor side
    def placeholder_task_index(self, input_ids: Tensor) -> Tensor:
        """``(B, L)`` long: index into :attr:`task_names` of each placeholder token, -1 elsewhere."""
        self._require_bound()
        match = input_ids[..., None] == self.placeholder_ids  # (B, L, T)
        index = match.long().argmax(-1)
        return torch.where(match.any(-1), index, -1)

    def inject(
        self, input_ids: Tensor, inputs_embeds: Tensor, boxes: Tensor | None = None
    ) -> Tensor:
        """Put the task embeddings (and encoded input boxes) into the input embeddings.

        Args:
            input_ids: ``(B, L)`` token ids.
            inputs_embeds: ``(B, L, D)`` embeddings of ``input_ids``.
            boxes: ``(K, 4)`` normalised ``(cx, cy, w, h)`` in [0, 1], one per input-box token
                (``<track_box>``) in row-major order of (sample, position); ``None`` when the batch
                has no such token.

        Returns:
            ``(B, L, D)`` new embeddings (the input is not modified). Gradients reach the task
            embeddings and the box encoder.

        Raises:
            ValueError: ``inputs_embeds`` does not match ``input_ids``; the number of boxes differs
                from the number of input-box tokens; a box lies outside [0, 1].
        """
        if (
            inputs_embeds.shape[:2] != input_ids.shape
            or inputs_embeds.shape[-1] != self.hidden_size
        ):
            raise ValueError(
                f"inputs_embeds: expected shape {(*input_ids.shape, self.hidden_size)} "
                f"for input_ids {tuple(input_ids.shape)}, got {tuple(inputs_embeds.shape)}"
            )
        task_index = self.placeholder_task_index(input_ids)
        table = torch.stack([self.embeddings[name] for name in self.specs]).to(inputs_embeds.dtype)
        is_task = (task_index >= 0)[..., None]
        out = torch.where(is_task, table[task_index.clamp(min=0)], inputs_embeds)

        box_positions = torch.isin(input_ids, self.input_ids_of_boxes)
        num_box_tokens = int(box_positions.sum())
        num_boxes = 0 if boxes is None else boxes.shape[0]
        if num_box_tokens != num_boxes:
            raise ValueError(
                f"boxes: the batch has {num_box_tokens} input-box tokens "
                f"({self._box_token_names()}) but {num_boxes} boxes were given"
            )
        if num_boxes:
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(
                    f"boxes: expected (K, 4) normalised cx, cy, w, h, "
                    f"got shape {tuple(boxes.shape)}"
                )
            bad = ((boxes < 0) | (boxes > 1)).any(-1)
            if bad.any():
                first = int(bad.nonzero()[0, 0])
                values = [round(v, 4) for v in boxes[first].tolist()]
                raise ValueError(
                    f"boxes[{first}] = {values}: input boxes for "
                    f"{self._box_token_names()} must be normalised to [0, 1]"
                )
            encoded = self.box_encoder(boxes.to(self.token_ids.device, torch.float32))
            out = out.index_put(tuple(box_positions.nonzero().unbind(1)), encoded.to(out.dtype))
        return out

    def _box_token_names(self) -> str:
        return ", ".join(s.input_token for s in self.specs.values() if s.input_token) or "none"

    def gather(self, input_ids: Tensor, hidden_states: Tensor) -> dict[str, TaskGather]:
        """Hidden states at each task's placeholder tokens.

        Args:
            input_ids: ``(B, L)`` token ids.
            hidden_states: ``(B, L, D)`` the LLM's last hidden states.

        Returns:
            ``{task: TaskGather}`` for every task of this module, with ``N >= 0`` rows each, in
            row-major order of (sample, position).
        """
        if hidden_states.shape[:2] != input_ids.shape:
            raise ValueError(
                f"hidden_states: expected (B, L, D) with (B, L) = "
                f"{tuple(input_ids.shape)}, got {tuple(hidden_states.shape)}"
            )
        task_index = self.placeholder_task_index(input_ids)
        out = {}
        for t, name in enumerate(self.specs):
            batch_index, position = (task_index == t).nonzero(as_tuple=True)
            out[name] = TaskGather(hidden_states[batch_index, position], batch_index, position)
        return out

    def trainable_token_rows(self) -> Tensor:
        """Ids of every task token (rows of the embedding matrix the tokens added)."""
        ids = self.token_ids.flatten()
        return ids[ids >= 0]


def resize_with_mean_rows(model: nn.Module, new_num_tokens: int) -> None:
    """Resize ``model``'s token embeddings to ``new_num_tokens``; new rows get the old rows' mean.

    Works on any ``transformers.PreTrainedModel``; the output projection is filled too when it is
    not tied to the input embeddings.
    """
    old = model.get_input_embeddings().weight.shape[0]
    if new_num_tokens <= old:
        return
    model.resize_token_embeddings(new_num_tokens, mean_resizing=False)
    with torch.no_grad():
        for module in _distinct([model.get_input_embeddings(), model.get_output_embeddings()]):
            weight = module.weight
            weight[old:] = weight[:old].mean(0, keepdim=True)
            bias = getattr(module, "bias", None)
            if bias is not None and bias.shape[0] == weight.shape[0]:
                bias[old:] = bias[:old].mean()


def _distinct(modules: Iterable[nn.Module | None]) -> list[nn.Module]:
    seen, out = set(), []
    for m in modules:
        if m is not None and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append(m)
    return out

"""What the Hugging Face image-text-to-text families share.

LLaVA, Qwen-VL and InternVL backbones wrap an ``AutoModelForImageTextToText`` model and its
processor, and differ only in how media become visual tokens (``encode_visual`` -> an
:class:`~tpo.backbones.base.EncodedVisual`) and in the markers their processors write. The rest is
here, once: the model-type check, task tokens bound or attached, the forward (media encoded once,
handed to the LLM as ``mm_encoder_outputs``), the LoRA scope, modality-adaptive layers on the LLM,
and saving / loading, with plain Hugging Face folders checked for their processor files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor

from tpo.backbones.base import Backbone, BackboneOutput, EncodedVisual
from tpo.tokens import TaskTokens

__all__ = ["HFBackbone", "PROCESSOR_FILES", "WrappedProcessor", "load_processor"]

PROCESSOR_FILES = {
    "processor / image processor config": ("processor_config.json", "preprocessor_config.json"),
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "vocab.json"),
}
"""What a saved processor holds: one file of each group."""


class WrappedProcessor:
    """A Hugging Face processor as the collator uses it: the pass-through part every family's
    wrapper shares (tokenizer, chat template, saving). Subclasses set ``image_token`` /
    ``video_token`` (the text for one medium) and define ``__call__``."""

    image_token: str
    video_token: str

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def chat_template(self) -> str | None:
        return getattr(self.processor, "chat_template", None)

    def apply_chat_template(self, conversation: list[dict], **kwargs) -> Any:
        """The wrapped processor's ``apply_chat_template``."""
        return self.processor.apply_chat_template(conversation, **kwargs)

    def save_pretrained(self, directory: str | Path) -> None:
        self.processor.save_pretrained(str(directory))


def load_processor(directory: Path) -> Any:
    """``AutoProcessor.from_pretrained(directory)``, after checking the folder holds a processor.

    Raises:
        FileNotFoundError: the folder lacks the processor's or the tokenizer's files (named).
    """
    missing = [f"{what} ({' or '.join(names)})" for what, names in PROCESSOR_FILES.items()
               if not any((directory / name).is_file() for name in names)]
    if missing:
        raise FileNotFoundError(
            f"{directory}: no processor; missing the {', the '.join(missing)}. Save the processor "
            "beside the model (processor.save_pretrained(folder))"
        )
    return AutoProcessor.from_pretrained(directory)


class HFBackbone(Backbone):
    """A Hugging Face image-text-to-text model with TPO task tokens.

    Subclasses set :attr:`supported_model_types`, implement :meth:`wrap_processor` and
    ``encode_visual(batch) -> EncodedVisual``, and may name more visual token ids
    (:meth:`visual_token_ids`, for the modality-adaptive layers).

    Args:
        model: a ``*ForConditionalGeneration`` of one of :attr:`supported_model_types`.
        processor: its Hugging Face processor (wrapped by :meth:`wrap_processor`).
        task_tokens: task tokens to attach (added to the tokenizer and embeddings if the tokenizer
            lacks them, new rows starting at the mean of the old ones); ``None`` for none.
    """

    supported_model_types: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, processor: Any, *, task_tokens: TaskTokens | None = None) -> None:
        super().__init__()
        model_type = model.config.model_type
        if model_type not in self.supported_model_types:
            raise ValueError(
                f"model: model_type {model_type!r} is not supported by {type(self).__name__}; expected "
                f"one of {self.supported_model_types}"
            )
        self.model = model
        self.model_type = model_type
        self.processor = self.wrap_processor(processor)
        self.visual_dim = model.config.text_config.hidden_size
        self.task_tokens = None
        if task_tokens is not None:
            self._adopt_task_tokens(task_tokens)

    def wrap_processor(self, processor: Any) -> Any:
        """The processor as the collator uses it (``image_token`` / ``video_token`` markers)."""
        raise NotImplementedError

    def encode_visual(self, batch: dict) -> EncodedVisual:
        raise NotImplementedError

    def _adopt_task_tokens(self, task_tokens: TaskTokens) -> None:
        """Bind ``task_tokens`` to a tokenizer that has their tokens, else add them."""
        vocab = self.tokenizer.get_vocab()
        if all(tok in vocab for spec in task_tokens.specs.values() for tok in spec.tokens):
            task_tokens.bind(self.tokenizer)
            self.task_tokens = task_tokens
            self.install_injection_hook()
        else:
            self.attach_task_tokens(task_tokens)

    @property
    def language_model(self) -> nn.Module:
        return self.model

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    @property
    def video_token_id(self) -> int | None:
        return getattr(self.model.config, "video_token_id", None)

    def visual_token_ids(self) -> list[int]:
        """The ids of the tokens that carry visual features (modality 1 of the adaptive layers)."""
        return [i for i in (self.image_token_id, self.video_token_id) if i is not None]

    def enable_modality_adaptive(self, num_modalities: int = 2):
        from tpo.backbones.modality_adaptive import ModalityAdaptive

        self.modality_adaptive = ModalityAdaptive.wrap(self.model, num_modalities,
                                                       visual_token_ids=self.visual_token_ids())
        return self.modality_adaptive

    def lora_scope(self) -> tuple[nn.Module, str]:
        return self.model, r"model\.language_model\."

    def forward(self, batch: dict) -> BackboneOutput:
        """Run the model on a batch: media encoded once (:meth:`encode_visual`), the LLM on the
        tokens with those features, the task tokens' hidden states gathered."""
        encoded = self.encode_visual(batch)
        out = self.lm_forward(batch, mm_encoder_outputs=encoded.mm_encoder_outputs or None)
        hidden = out.hidden_states[-1]
        return BackboneOutput(
            loss=out.loss,
            logits=out.logits,
            hidden_states=hidden,
            tasks=self.gather_tasks(batch["input_ids"], hidden),
            **encoded.fields,
        )

    def _save_model(self, directory: Path) -> dict:
        self.model.save_pretrained(directory / "model")
        self.processor.save_pretrained(directory / "processor")
        return {}

    @classmethod
    def _load(cls, directory: Path, config: dict, **model_kwargs) -> HFBackbone:
        model = AutoModelForImageTextToText.from_pretrained(directory / "model", **model_kwargs)
        return cls(model, load_processor(directory / "processor"))

    @classmethod
    def _load_hf(cls, directory: Path, **model_kwargs) -> HFBackbone:
        """A plain Hugging Face model folder (``config.json`` + weights + processor files)."""
        processor = load_processor(directory)
        return cls(AutoModelForImageTextToText.from_pretrained(directory, **model_kwargs), processor)

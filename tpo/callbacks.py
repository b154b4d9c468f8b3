"""Lightning callbacks of the training loop: what a NaN or infinite loss does.

``NonFiniteLoss`` checks the loss terms of every training batch before its backward pass; all
processes agree on the outcome (one collective), so under DDP they stop or skip together::

    training_step -> module.last_loss_terms {name: 0-dim}   # TPOModule sets them
    on_before_backward:  any term non-finite on any process?
        stop: checkpoint the weights from before the step, raise NonFiniteLossError
        skip: count it, warn; the gradients are dropped before the optimizer step
    on_before_optimizer_step:  a skipped batch in this (accumulated) update -> grads None
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

__all__ = ["NONFINITE_MODES", "NonFiniteLoss", "NonFiniteLossError"]

log = logging.getLogger(__name__)

NONFINITE_MODES = ("stop", "skip")


class NonFiniteLossError(FloatingPointError):
    """A training loss term was NaN or infinite (``NonFiniteLoss(mode="stop")``).

    Attributes:
        terms: the non-finite terms on this process (``lm_loss``, ``assign_loss``,
            ``<task>/<term>``), empty when another process had them.
        checkpoint: where the weights from before the bad step were saved, or ``None``.
    """

    def __init__(self, message: str, *, terms: list[str], checkpoint: Path | None) -> None:
        super().__init__(message)
        self.terms, self.checkpoint = terms, checkpoint


class NonFiniteLoss(L.Callback):
    """Stop or skip on a NaN or infinite training loss term, agreed across processes.

    The terms checked are the module's ``last_loss_terms`` (``{name: 0-dim tensor}``, set by
    :class:`~tpo.TPOModule` in each training step; ``"loss"`` is the total, named only when no
    other term is bad), else the loss given to backward.

    Args:
        mode: ``"stop"``: save a checkpoint of the weights from before the bad step
            (``nonfinite-epoch=E-step=S.ckpt`` in the checkpoint folder, else the trainer's
            ``default_root_dir``) and raise :class:`NonFiniteLossError` naming the terms.
            ``"skip"``: log a warning with the terms and the step, count the batch in
            :attr:`skipped` (logged as ``train/nonfinite_skipped``, kept in checkpoints) and skip
            the optimizer update it is part of (with gradient accumulation, the whole accumulated
            update): the backward pass runs, then every process sets every gradient to ``None``,
            so no process updates (AdamW leaves a weight without gradient as it is).
    """

    def __init__(self, mode: str = "stop") -> None:
        self.mode = mode
        self.skipped = 0
        self._skip_update = False
        self._batch_idx = 0

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in NONFINITE_MODES:
            raise ValueError(f"nonfinite: expected one of {list(NONFINITE_MODES)}, got {mode!r}")
        self._mode = mode

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        terms = dict(getattr(pl_module, "last_loss_terms", None) or {"loss": loss})
        finite = torch.stack([v.detach().float() for v in terms.values()]).isfinite().tolist()
        bad = [name for name, ok in zip(terms, finite, strict=True) if not ok]
        bad = [name for name in bad if name != "loss"] or bad
        if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            return
        step, epoch, batch = trainer.global_step, trainer.current_epoch, self._batch_idx
        where = (f"non-finite training loss terms {bad}" if bad else
                 "a non-finite training loss term on another process (see its message)")
        if self.mode == "skip":
            self.skipped += 1
            self._skip_update = True
            log.warning("%s at step %d (epoch %d, batch %d): batch skipped (%d skipped so far)",
                        where, step, epoch, batch, self.skipped)
            pl_module.log("train/nonfinite_skipped", float(self.skipped), prog_bar=False)
            return
        folder = getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir
        path = Path(folder) / f"nonfinite-epoch={epoch}-step={step}.ckpt"
        trainer.save_checkpoint(path)
        raise NonFiniteLossError(
            f"{where} at step {step} (epoch {epoch}, batch {batch}); training stopped, the weights "
            f"from before this step are saved in {path}. Lower the learning rate or that term's "
            "weight, check the batch's targets, or pass TPOModule(nonfinite='skip') to skip such "
            "batches.",
            terms=bad,
            checkpoint=path,
        )

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._skip_update:  # every process skipped with it: no gradient anywhere, no update
            self._skip_update = False
            optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

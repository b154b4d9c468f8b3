"""Input checks shared by the metric classes and functions, and the empty-metric convention.

An empty metric (``compute()`` with nothing accumulated, after no ``update`` or only updates
that held no query / sample / frame) returns NaN for every value and emits an
:class:`EmptyMetricWarning`, as ``torchmetrics``' own mean metrics do for 0 / 0: a score that
was never measured must not read as 0 (or 1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = ["EmptyMetricWarning", "SaliencyLengthWarning", "empty_result", "first_bad",
           "check_sequence_arg"]


class EmptyMetricWarning(UserWarning):
    """``compute()`` was called on a metric that accumulated nothing; its values are NaN."""


class SaliencyLengthWarning(UserWarning):
    """Predicted saliency is not one score per clip; it was cut or zero-padded to the clip count
    (Moment-DETR's ``standalone_eval`` does that silently)."""


def empty_result(metric: object, values: Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
    """``values`` with every entry NaN, after an :class:`EmptyMetricWarning` naming ``metric``."""
    warnings.warn(
        f"{type(metric).__name__}.compute(): no {what} accumulated (update() was never called "
        "or got none); every value is NaN",
        EmptyMetricWarning,
        stacklevel=3,
    )
    return {k: torch.full_like(v, math.nan) for k, v in values.items()}


def first_bad(bad: np.ndarray | Tensor) -> tuple[int, ...] | None:
    """Index of the first True entry of ``bad`` (row-major), or ``None``."""
    if isinstance(bad, Tensor):
        bad = bad.detach().cpu().numpy()
    idx = np.argwhere(bad)
    return None if len(idx) == 0 else tuple(int(i) for i in idx[0])


def check_sequence_arg(value: object, name: str, what: str) -> None:
    """``ValueError`` unless ``value`` is a list/tuple of tensors (one per query)."""
    if isinstance(value, Tensor) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{name}: expected a list of {what}, one tensor per query, "
                         f"got {type(value).__name__}")
    for i, v in enumerate(value):
        if not isinstance(v, Tensor):
            raise ValueError(f"{name}[{i}]: expected a tensor of {what}, got {type(v).__name__}")

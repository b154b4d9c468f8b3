"""Weighting of named loss terms (DETR: ``sum(loss_dict[k] * weight_dict[k] for k in loss_dict)``).

Criteria return their terms unweighted and carry a ``weight_dict`` keyed by term name, so the
terms can be logged as they are and summed as the training objective weighs them.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

__all__ = ["weighted"]


def weighted(terms: Mapping[str, Tensor], weight_dict: Mapping[str, float]) -> dict[str, Tensor]:
    """Every term times its weight: ``{name: weight_dict[name] * terms[name]}``.

    Args:
        terms: named unweighted loss terms, each a 0-dim tensor.
        weight_dict: ``{name: weight}``; may hold weights of terms that are absent.

    Raises:
        ValueError: naming a term that has no weight in ``weight_dict``.
    """
    missing = [name for name in terms if name not in weight_dict]
    if missing:
        raise ValueError(
            f"weight_dict: no weight for the loss terms {missing} (weights for {sorted(weight_dict)})"
        )
    return {name: weight_dict[name] * value for name, value in terms.items()}

"""Denominators of the criteria's means, local or taken over all processes (DETR's ``num_boxes``).

Every criterion writes its terms as sums over items (boxes, frames, matched spans...) divided by
the number of those items. Each kind of item has a key (``count_keys``), and each criterion says
how many it has in a batch (``counts``). Under data parallelism :class:`~tpo.TPOModule`
all-reduces every head's counts in one collective and passes ``normalizers`` (the total over
processes, at least 1, divided by the number of processes) to the criteria. DDP then averages the
gradients over processes, so the step equals one process on the union of the batches, whatever
each process holds.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

__all__ = ["Normalizers", "normalizer"]

Normalizers = Mapping[str, Tensor]


def normalizer(normalizers: Normalizers | None, key: str, local: Tensor) -> Tensor:
    """The denominator of a mean over the items ``key``.

    Args:
        normalizers: ``{key: scalar}`` from all processes, or ``None`` for this batch alone.
        key: the kind of item (one of the criterion's ``count_keys``).
        local: this batch's count of the items.

    Returns:
        ``normalizers[key]`` when given, else ``local`` clamped to at least 1 (a mean over no
        items is 0, not NaN).
    """
    if normalizers is None:
        return local.clamp(min=1)
    if key not in normalizers:
        raise ValueError(f"normalizers: missing {key!r} (have {sorted(normalizers)})")
    return normalizers[key].to(local.device)

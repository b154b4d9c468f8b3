"""Video object segmentation: DAVIS J&F as a ``torchmetrics.Metric``."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from tpo.metrics._validate import empty_result
from tpo.metrics.functional.masks import j_and_f

__all__ = ["JAndF"]


class JAndF(Metric):
    """Region similarity J, boundary F-measure F and their mean, per object then averaged.

    Per-frame values follow the DAVIS 2017 toolkit's ``db_eval_iou`` / ``db_eval_boundary``
    (see :mod:`tpo.metrics.functional.masks`). Each ``update`` is one object track (DAVIS) or
    one expression's merged mask track (MeViS, Ref-YouTube-VOS): its J and F are averaged over
    frames, then ``J``, ``F`` are the means over objects and ``J&F = (J + F) / 2``, as DAVIS and
    MeViS report. ``J-recall`` / ``F-recall`` (DAVIS "R") average the fraction of frames above
    0.5. ``drop_first_last=True`` ignores the first and last frame as the DAVIS 2017
    semi-supervised evaluation does.

    ``update(preds (T, H, W), target (T, H, W), void (T, H, W) | None)``, masks nonzero = object;
    ``ValueError`` when ``target`` or ``void`` has another frame count or size than ``preds``,
    or a mask holds NaN. A metric that holds no object returns NaN everywhere with an
    :class:`~tpo.metrics.EmptyMetricWarning`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, *, bound_th: float = 0.008, drop_first_last: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.bound_th = bound_th
        self.drop_first_last = drop_first_last
        for name in ("j_sum", "f_sum", "j_recall_sum", "f_recall_sum", "objects"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, void: Tensor | None = None) -> None:
        for name, x in (("preds", preds), ("target", target), ("void", void)):
            if x is None and name == "void":
                continue
            if not isinstance(x, Tensor):
                raise ValueError(f"{name}: expected a (T, H, W) tensor of masks, got "
                                 f"{type(x).__name__}")
            if x.is_floating_point() and bool(x.isnan().any()):
                raise ValueError(f"{name}: mask holds NaN; expected bool or 0/1 masks")
        if preds.ndim != 3 or preds.shape[0] == 0:
            raise ValueError(f"preds: expected (T, H, W) masks with T >= 1, got "
                             f"{tuple(preds.shape)}")
        for name, x in (("target", target), ("void", void)):
            if x is not None and x.shape != preds.shape:
                raise ValueError(f"{name}: expected shape {tuple(preds.shape)} (T, H, W) like "
                                 f"preds, got {tuple(x.shape)}")
        if self.drop_first_last:
            if preds.shape[0] < 3:
                raise ValueError(f"preds: drop_first_last needs >= 3 frames, got {preds.shape[0]}")
            preds, target = preds[1:-1], target[1:-1]
            void = None if void is None else void[1:-1]
        j, f = j_and_f(preds, target, self.bound_th, void)
        self.j_sum += j.mean()
        self.f_sum += f.mean()
        self.j_recall_sum += (j > 0.5).to(torch.float64).mean()
        self.f_recall_sum += (f > 0.5).to(torch.float64).mean()
        self.objects += 1

    def compute(self) -> dict[str, Tensor]:
        n = self.objects.clamp(min=1)
        j, f = self.j_sum / n, self.f_sum / n
        out = {"J&F": (j + f) / 2, "J": j, "F": f, "J-recall": self.j_recall_sum / n,
               "F-recall": self.f_recall_sum / n}
        return empty_result(self, out, "objects") if bool(self.objects == 0) else out

"""Referring-expression grounding: box Acc@0.5 and the mask gIoU / cIoU of the LISA family."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from tpo.metrics._validate import empty_result
from tpo.metrics.functional.boxes import box_iou, check_xyxy
from tpo.metrics.functional.masks import mask_intersection_union

__all__ = ["GroundingAccuracy"]


class GroundingAccuracy(Metric):
    """Acc@thr, gIoU and cIoU for referring expression comprehension / segmentation.

    - Boxes ``(N, 4)`` absolute ``xyxy``: a hit when ``IoU >= iou_threshold`` (0.5), the
      RefCOCO/+/g protocol of MDETR and the TPO paper; areas are ``w * h`` (no ``+1``).
    - Masks ``(N, H, W)`` (nonzero = object): per-sample IoU as LISA's ``ReasonSeg`` /
      ``refCOCO`` evaluation, an empty union counting as IoU 1.

    For either input, ``giou`` is the mean of per-sample IoUs and ``ciou`` the total
    intersection over the total union (area units: px^2 for boxes, pixels for masks); a total
    union of 0 (every mask empty) gives ``ciou`` 0, as LISA's ``intersection / (union + 1e-10)``.
    A metric that holds no sample returns NaN everywhere with an
    :class:`~tpo.metrics.EmptyMetricWarning`.

    ``update(preds, target)``: both ``(N, 4)`` boxes or both ``(N, H, W)`` masks. ``ValueError``
    for shapes that differ (masks of another size than the target's), NaN / infinite box
    coordinates or boxes with ``x2 < x1`` / ``y2 < y1``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, *, iou_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.iou_threshold = float(iou_threshold)
        for name in ("hits", "iou_sum", "inter_sum", "union_sum", "count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        for name, x in (("preds", preds), ("target", target)):
            if not isinstance(x, Tensor):
                raise ValueError(f"{name}: expected a tensor of (N, 4) boxes or (N, H, W) masks, "
                                 f"got {type(x).__name__}")
        if preds.shape != target.shape:
            raise ValueError(f"target: expected shape {tuple(preds.shape)} like preds, "
                             f"got {tuple(target.shape)}")
        if preds.ndim == 2 and preds.shape[-1] == 4:
            p, t = preds.detach().cpu().to(torch.float64), target.detach().cpu().to(torch.float64)
            check_xyxy(p, "boxes1", "preds")
            check_xyxy(t, "boxes2", "target")
            iou = box_iou(p, t)
            lt = torch.maximum(p[:, :2], t[:, :2])
            rb = torch.minimum(p[:, 2:], t[:, 2:])
            inter = (rb - lt).clamp(min=0).prod(-1)
            union = (p[:, 2:] - p[:, :2]).prod(-1) + (t[:, 2:] - t[:, :2]).prod(-1) - inter
        elif preds.ndim == 3:
            inter, union = mask_intersection_union(preds, target)
            inter, union = inter.to(torch.float64), union.to(torch.float64)
            iou = torch.where(union > 0, inter / union.clamp(min=1), 1.0)
        else:
            raise ValueError(f"preds: expected (N, 4) xyxy boxes or (N, H, W) masks, "
                             f"got {tuple(preds.shape)}")
        self.hits += (iou >= self.iou_threshold).sum().to(self.hits)
        self.iou_sum += iou.sum().to(self.iou_sum)
        self.inter_sum += inter.sum().to(self.inter_sum)
        self.union_sum += union.sum().to(self.union_sum)
        self.count += iou.numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1)
        out = {
            f"acc@{self.iou_threshold:g}": self.hits / n,
            "giou": self.iou_sum / n,
            "ciou": torch.where(self.union_sum > 0,
                                self.inter_sum / self.union_sum.clamp(min=1e-12), 0.0),
        }
        return empty_result(self, out, "samples") if bool(self.count == 0) else out

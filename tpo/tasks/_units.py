"""Unit conversions the task modules share: normalised boxes to pixels."""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import box_convert

__all__ = ["cxcywh_to_px"]


def cxcywh_to_px(boxes: Tensor, size: tuple[int, int], fmt: str) -> Tensor:
    """Normalised ``(..., 4)`` cxcywh boxes as pixels of an image ``size`` in ``fmt``
    (``"xyxy"`` or ``"xywh"``)."""
    height, width = size
    scale = boxes.new_tensor([width, height, width, height])
    return box_convert(boxes.float(), "cxcywh", fmt) * scale

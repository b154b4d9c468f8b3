"""Unit conversions the task modules share: normalised boxes to pixels, image sizes from meta."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor
from torchvision.ops import box_convert

__all__ = ["cxcywh_to_px", "image_size"]


def image_size(meta: Mapping) -> tuple[int, int]:
    """``meta["image_size"]`` as ``(height, width)`` pixels."""
    size = meta.get("image_size")
    if size is None:
        raise ValueError(f"meta: needs 'image_size' (height, width) px, got keys {sorted(meta)}")
    return int(size[0]), int(size[1])


def cxcywh_to_px(boxes: Tensor, size: tuple[int, int], fmt: str) -> Tensor:
    """Normalised ``(..., 4)`` cxcywh boxes as pixels of an image ``size`` in ``fmt``
    (``"xyxy"`` or ``"xywh"``)."""
    height, width = size
    scale = boxes.new_tensor([width, height, width, height])
    return box_convert(boxes.float(), "cxcywh", fmt) * scale

"""Box algebra on top of ``torchvision.ops``.

Inside heads boxes are normalised ``(cx, cy, w, h)`` in ``[0, 1]`` of the image; at the API
boundary they are absolute pixels, ``xyxy`` for grounding and ``xywh`` for tracking (the
LaSOT/GOT-10k result format). Pairwise functions return ``(N, M)``; the ``*_elementwise``
ones compare row ``i`` with row ``i`` and return ``(N,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, box_iou, generalized_box_iou

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_xyxy_to_xywh",
    "box_xywh_to_xyxy",
    "box_iou",
    "generalized_box_iou",
    "box_iou_elementwise",
    "generalized_box_iou_elementwise",
    "boxes_to_pixels",
    "check_normalized_boxes",
    "patch_centers",
    "patch_targets",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` (cx, cy, w, h) -> ``(..., 4)`` (x1, y1, x2, y2)."""
    return box_convert(boxes, "cxcywh", "xyxy")


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` (x1, y1, x2, y2) -> ``(..., 4)`` (cx, cy, w, h)."""
    return box_convert(boxes, "xyxy", "cxcywh")


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` (x1, y1, x2, y2) -> ``(..., 4)`` (x, y, w, h), top-left corner and size."""
    return box_convert(boxes, "xyxy", "xywh")


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` (x, y, w, h) -> ``(..., 4)`` (x1, y1, x2, y2)."""
    return box_convert(boxes, "xywh", "xyxy")


def _elementwise_inter_union(boxes_a: Tensor, boxes_b: Tensor) -> tuple[Tensor, Tensor]:
    if boxes_a.shape != boxes_b.shape or boxes_a.shape[-1] != 4:
        raise ValueError(
            f"boxes_a, boxes_b: expected two (..., 4) xyxy tensors of one shape, got "
            f"{tuple(boxes_a.shape)} and {tuple(boxes_b.shape)}"
        )
    top_left = torch.maximum(boxes_a[..., :2], boxes_b[..., :2])
    bottom_right = torch.minimum(boxes_a[..., 2:], boxes_b[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (boxes_a[..., 2] - boxes_a[..., 0]) * (boxes_a[..., 3] - boxes_a[..., 1])
    area_b = (boxes_b[..., 2] - boxes_b[..., 0]) * (boxes_b[..., 3] - boxes_b[..., 1])
    return inter, area_a + area_b - inter


def box_iou_elementwise(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """IoU of matching rows: ``(..., 4)`` xyxy and ``(..., 4)`` xyxy -> ``(...)``.

    A pair whose union is empty (two degenerate boxes) has IoU 0.
    """
    inter, union = _elementwise_inter_union(boxes_a, boxes_b)
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def generalized_box_iou_elementwise(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """GIoU of matching rows: ``(..., 4)`` xyxy and ``(..., 4)`` xyxy -> ``(...)`` in [-1, 1].

    ``1 - torchvision.ops.generalized_box_iou_loss``; differentiable.
    """
    inter, union = _elementwise_inter_union(boxes_a, boxes_b)
    iou = inter / union.clamp(min=1e-7)
    hull_wh = (
        torch.maximum(boxes_a[..., 2:], boxes_b[..., 2:]) - torch.minimum(boxes_a[..., :2], boxes_b[..., :2])
    ).clamp(min=0)
    hull = (hull_wh[..., 0] * hull_wh[..., 1]).clamp(min=1e-7)
    return iou - (hull - union) / hull


def boxes_to_pixels(boxes: Tensor, image_size: tuple[int, int], fmt: str = "xyxy") -> Tensor:
    """Normalised ``(..., 4)`` (cx, cy, w, h) -> absolute pixels in ``fmt`` (``xyxy``/``xywh``).

    Args:
        boxes: ``(..., 4)`` normalised (cx, cy, w, h).
        image_size: ``(height, width)`` in pixels.
        fmt: ``"xyxy"`` or ``"xywh"``.

    Corners are clamped to the image, as the box is meant to lie inside it.
    """
    if fmt not in ("xyxy", "xywh"):
        raise ValueError(f"fmt: expected 'xyxy' or 'xywh', got {fmt!r}")
    height, width = image_size
    scale = boxes.new_tensor([width, height, width, height])
    xyxy = box_cxcywh_to_xyxy(boxes.float()) * scale
    xyxy = torch.minimum(xyxy.clamp(min=0), scale)
    return xyxy if fmt == "xyxy" else box_xyxy_to_xywh(xyxy)


def check_normalized_boxes(boxes: Tensor, name: str, valid: Tensor | None = None) -> None:
    """Raise ``ValueError`` unless ``boxes (B, ..., 4)`` are normalised cxcywh with w, h > 0.

    Args:
        boxes: ``(B, ..., 4)`` normalised (cx, cy, w, h); dim 0 is the sample index.
        name: the tensor's name for the message.
        valid: optional ``(B, ...)`` bool; only these boxes are checked (e.g. visible frames).
    """
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name}: expected (..., 4) cxcywh boxes, got shape {tuple(boxes.shape)}")
    boxes = boxes.detach().float()
    ok = valid.bool() if valid is not None else torch.ones(boxes.shape[:-1], dtype=torch.bool)
    ok = ok.to(boxes.device)
    xyxy = box_cxcywh_to_xyxy(boxes)
    tol = 1e-4
    bad = ok & ~(
        (boxes[..., 2:] > 0).all(-1)
        & (xyxy >= -tol).all(-1)
        & (xyxy <= 1 + tol).all(-1)
        & torch.isfinite(boxes).all(-1)
    )
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}: box at sample {index[0]} (index {index}) is {boxes[index].tolist()}; "
            "expected normalised (cx, cy, w, h) with w > 0, h > 0 inside [0, 1]"
        )


def patch_centers(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """``(h * w, 2)`` normalised (x, y) centres of a row-major patch grid."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.flatten(), grid_y.flatten()), dim=-1)


def patch_targets(boxes: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """``(..., 4)`` normalised cxcywh boxes -> ``(..., N)`` target distribution over patches.

    Each patch weighs the area of the box it covers (the box clipped to the image), so the mean
    of the patch centres under the target lies within a small fraction of a patch of the box
    centre, while a box edge inside a patch is still told apart. A degenerate box (no area
    inside the image) puts all the mass on the patch that holds its centre.
    """
    height, width = grid_size
    box = box_cxcywh_to_xyxy(boxes.float()).clamp(0, 1)[..., None, :]  # (..., 1, 4)

    def overlap(low: Tensor, high: Tensor, cells: int) -> Tensor:  # (..., cells)
        edges = torch.arange(cells + 1, device=boxes.device, dtype=torch.float32) / cells
        return (torch.minimum(high, edges[1:]) - torch.maximum(low, edges[:-1])).clamp(min=0)

    cover_x = overlap(box[..., 0], box[..., 2], width)  # (..., w)
    cover_y = overlap(box[..., 1], box[..., 3], height)  # (..., h)
    cover = (cover_y[..., :, None] * cover_x[..., None, :]).flatten(-2)  # (..., h * w) row-major
    col = (boxes[..., 0] * width).long().clamp(0, width - 1)
    row = (boxes[..., 1] * height).long().clamp(0, height - 1)
    fallback = F.one_hot(row * width + col, height * width).float()
    total = cover.sum(-1, keepdim=True)
    return torch.where(total > 0, cover / total.clamp(min=1e-12), fallback)

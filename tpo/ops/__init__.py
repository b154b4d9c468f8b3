"""Shared geometry: temporal spans, boxes, masks and matching."""

from tpo.ops.spans import (
    generalized_temporal_iou,
    span_cxw_to_se,
    span_se_to_cxw,
    temporal_intersection_union,
    temporal_iou,
)

__all__ = [
    "generalized_temporal_iou",
    "span_cxw_to_se",
    "span_se_to_cxw",
    "temporal_intersection_union",
    "temporal_iou",
]

from tpo.ops.boxes import (  # noqa: E402
    box_cxcywh_to_xyxy,
    box_iou_elementwise,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    boxes_to_pixels,
    generalized_box_iou_elementwise,
)
from tpo.ops.masks import dice_loss, focal_loss, mask_iou  # noqa: E402
from tpo.ops.matcher import HungarianMatcher  # noqa: E402
from tpo.ops.spans import temporal_nms  # noqa: E402

__all__ += [
    "HungarianMatcher",
    "box_cxcywh_to_xyxy",
    "box_iou_elementwise",
    "box_xywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_xyxy_to_xywh",
    "boxes_to_pixels",
    "dice_loss",
    "focal_loss",
    "generalized_box_iou_elementwise",
    "mask_iou",
    "temporal_nms",
]

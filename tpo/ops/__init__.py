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

"""Pure metric functions; the ``Metric`` classes in :mod:`tpo.metrics` accumulate them."""

from tpo.metrics.functional.boxes import (
    NORM_PRECISION_THRESHOLDS,
    PRECISION_THRESHOLDS,
    SUCCESS_THRESHOLDS,
    box_iou,
    center_error,
    normalized_center_error,
    normalized_precision_curve,
    precision_curve,
    rect_iou,
    success_curve,
)
from tpo.metrics.functional.masks import (
    boundary_f_measure,
    boundary_radius,
    j_and_f,
    mask_intersection_union,
    region_similarity,
)
from tpo.metrics.functional.moments import (
    MAP_IOU_THRESHOLDS,
    cross_temporal_iou,
    highlight_average_precision,
    highlight_hit_at_one,
    moment_average_precision,
    moment_top1_iou,
    pad_windows,
    temporal_iou,
)

__all__ = [
    "MAP_IOU_THRESHOLDS",
    "NORM_PRECISION_THRESHOLDS",
    "PRECISION_THRESHOLDS",
    "SUCCESS_THRESHOLDS",
    "boundary_f_measure",
    "boundary_radius",
    "box_iou",
    "center_error",
    "cross_temporal_iou",
    "highlight_average_precision",
    "highlight_hit_at_one",
    "j_and_f",
    "mask_intersection_union",
    "moment_average_precision",
    "moment_top1_iou",
    "normalized_center_error",
    "normalized_precision_curve",
    "pad_windows",
    "precision_curve",
    "rect_iou",
    "region_similarity",
    "success_curve",
    "temporal_iou",
]

"""Training criteria of the task heads, kept apart from the modules (DETR / SAM2 style)."""

from tpo.losses.boxes import BoxCriterion, TrackingCriterion
from tpo.losses.masks import MaskCriterion
from tpo.losses.temporal import TemporalGroundingCriterion, saliency_from_spans

__all__ = [
    "BoxCriterion",
    "MaskCriterion",
    "TemporalGroundingCriterion",
    "TrackingCriterion",
    "saliency_from_spans",
]

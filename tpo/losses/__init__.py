"""Training criteria of the task heads, kept apart from the modules (DETR / SAM2 style).

Every criterion returns its named terms unweighted and carries ``weight_dict`` (``{term:
weight}``, auxiliary decoder-layer terms included); :func:`weighted` applies it.
"""

from tpo.losses.box import BoxCriterion
from tpo.losses.mask import MaskCriterion
from tpo.losses.temporal import TemporalGroundingCriterion, saliency_from_spans
from tpo.losses.track import TrackingCriterion
from tpo.losses.weights import weighted

__all__ = [
    "BoxCriterion",
    "MaskCriterion",
    "TemporalGroundingCriterion",
    "TrackingCriterion",
    "saliency_from_spans",
    "weighted",
]

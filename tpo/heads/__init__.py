"""Task heads: task embedding (+ visual features) -> spans, boxes, tracks, masks."""

from tpo.heads.box import BoxHead, BoxOutput, BoxPrediction
from tpo.heads.mask import MaskHead, MaskOutput, MaskPrediction
from tpo.heads.temporal import (
    TemporalGroundingHead,
    TemporalGroundingOutput,
    TemporalGroundingPrediction,
)
from tpo.heads.tracking import TrackingHead, TrackingOutput, TrackingPrediction

__all__ = [
    "BoxHead",
    "BoxOutput",
    "BoxPrediction",
    "MaskHead",
    "MaskOutput",
    "MaskPrediction",
    "TemporalGroundingHead",
    "TemporalGroundingOutput",
    "TemporalGroundingPrediction",
    "TrackingHead",
    "TrackingOutput",
    "TrackingPrediction",
]

try:  # the sam2 package is an optional extra
    from tpo.heads.sam2 import SAM2MaskHead
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:
    __all__ += ["SAM2MaskHead"]

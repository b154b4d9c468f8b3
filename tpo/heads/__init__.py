"""Task heads: task embedding (+ visual features) -> spans, boxes, tracks, masks.

``SAM2MaskHead`` (``from tpo.heads import SAM2MaskHead``), TPO's adapter to a frozen SAM2 built
on transformers' ``Sam2VideoModel``, is imported on first access (so ``import tpo.heads`` does
not load transformers' SAM2); it is not in ``__all__``.
"""

from tpo.heads.box import BoxHead, BoxOutput, BoxPrediction
from tpo.heads.mask import MaskHead, MaskOutput, MaskPrediction
from tpo.heads.temporal import (
    TemporalGroundingHead,
    TemporalGroundingOutput,
    TemporalGroundingPrediction,
)
from tpo.heads.track import TrackingHead, TrackingOutput, TrackingPrediction

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


def __getattr__(name: str):
    """``SAM2MaskHead`` is imported on first use: it imports transformers' SAM2 modules, which
    plain ``import tpo.heads`` never loads."""
    if name == "SAM2MaskHead":
        try:
            from tpo.heads.sam2 import SAM2MaskHead
        except ImportError as error:
            raise ImportError(
                "SAM2MaskHead needs transformers with SAM2 video models (Sam2VideoModel, "
                f"transformers>=5.24): {error}"
            ) from error
        return SAM2MaskHead
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

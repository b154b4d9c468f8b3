"""Task metrics that agree with the official evaluators.

``torchmetrics.Metric`` classes (DDP-ready states) plus pure functions in
:mod:`tpo.metrics.functional` and file-level evaluators. Nothing here imports models or heads.
"""

from tpo.metrics import functional
from tpo.metrics._validate import EmptyMetricWarning, SaliencyLengthWarning
from tpo.metrics.box import GroundingAccuracy
from tpo.metrics.mask import JAndF
from tpo.metrics.qvhighlights import (
    HIGHLIGHT_LEVELS,
    QVHIGHLIGHTS_LENGTH_BUCKETS,
    evaluate_charades_sta,
    evaluate_qvhighlights,
    load_jsonl,
)
from tpo.metrics.temporal import HighlightDetection, MomentRetrieval
from tpo.metrics.track import GOT10kMetrics, TrackingSuccess

__all__ = [
    "HIGHLIGHT_LEVELS",
    "QVHIGHLIGHTS_LENGTH_BUCKETS",
    "EmptyMetricWarning",
    "GOT10kMetrics",
    "GroundingAccuracy",
    "HighlightDetection",
    "JAndF",
    "MomentRetrieval",
    "SaliencyLengthWarning",
    "TrackingSuccess",
    "evaluate_charades_sta",
    "evaluate_qvhighlights",
    "functional",
    "load_jsonl",
]

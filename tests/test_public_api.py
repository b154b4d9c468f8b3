"""The public names of DESIGN.md import from where the design says."""

from __future__ import annotations


def test_design_public_names_import():
    from tpo import Answer, Predictor, TaskTokens, TPOModule
    from tpo.datamodules import MultiTaskDataModule, VideoReader, make_synthetic_dataset
    from tpo.heads import BoxHead, MaskHead, TemporalGroundingHead, TrackingHead
    from tpo.metrics import (
        GOT10kMetrics,
        GroundingAccuracy,
        HighlightDetection,
        JAndF,
        MomentRetrieval,
        TrackingSuccess,
        evaluate_qvhighlights,
    )
    from tpo.metrics import functional as TF
    from tpo.predict import evaluate_predictor

    for fn in ("temporal_iou", "box_iou", "region_similarity", "boundary_f_measure", "success_curve",
               "precision_curve"):
        assert callable(getattr(TF, fn)), fn
    assert all(callable(x) for x in (TaskTokens, TPOModule, MultiTaskDataModule, VideoReader,
                                     make_synthetic_dataset, BoxHead, MaskHead, TemporalGroundingHead,
                                     TrackingHead, GOT10kMetrics, GroundingAccuracy, HighlightDetection,
                                     JAndF, MomentRetrieval, TrackingSuccess, evaluate_qvhighlights,
                                     Answer, Predictor, evaluate_predictor))

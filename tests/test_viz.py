"""Plots show what they claim: a one-row timeline has a visible bar, absent frames no box."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tpo import viz

TRUTH, PRED = (0x2A, 0x9D, 0x8F), (0xE7, 0x6F, 0x51)


def _pixels(path, colour, tolerance: int = 12) -> np.ndarray:
    """``(H, W)`` bool: pixels of the image within ``tolerance`` of ``colour``."""
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return (np.abs(image - np.array(colour)) <= tolerance).all(-1)


def test_a_one_row_timeline_draws_bars_of_visible_height(tmp_path):
    row = {"label": "clip", "duration": 10.0, "truth": [[2.0, 6.0]], "pred": [[3.0, 7.0, 0.9]]}
    truth = _pixels(viz.plot_timelines([row], tmp_path / "timeline.png"), TRUTH)
    rows_with_bar = truth.any(1).sum()
    assert rows_with_bar >= 10, rows_with_bar  # the bar is 0.35 of a row: 10+ px, not a sliver
    columns = truth.any(0).nonzero()[0]
    pred = _pixels(tmp_path / "timeline.png", PRED)
    assert pred.any(1).sum() >= 10
    # the truth bar covers 4 s of 10, the prediction 4 s too: about the same width
    assert abs(int(pred.any(0).sum()) - len(columns)) <= 0.1 * len(columns)


def test_tracks_draw_no_predicted_box_where_the_object_is_predicted_absent(tmp_path):
    frames = np.full((3, 32, 32, 3), 255, np.uint8)
    boxes = np.array([[4, 4, 12, 12]] * 3, np.float32)
    shown = viz.plot_tracks(frames, boxes, boxes + 8, tmp_path / "shown.png")
    hidden = viz.plot_tracks(frames, boxes, boxes + 8, tmp_path / "hidden.png",
                             truth_visible=np.array([True, False, True]), pred_visible=np.zeros(3, bool))
    assert _pixels(shown, PRED).sum() > 0 and _pixels(hidden, PRED).sum() == 0
    assert 0 < _pixels(hidden, TRUTH).sum() < _pixels(shown, TRUTH).sum()  # two frames of three


def test_importing_viz_leaves_the_matplotlib_backend_alone():
    """Drawing uses its own figures: a notebook's (or the user's) backend stays as it was."""
    import os
    import subprocess
    import sys

    code = "import matplotlib, tpo.viz; print(matplotlib.get_backend())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "MPLBACKEND": "svg"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"

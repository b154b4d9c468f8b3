"""GroundingDecoder, shared by BoxHead (one frame) and TrackingHead (T frames)."""

from __future__ import annotations

import pytest
import torch

from tpo.heads import BoxHead, TrackingHead
from tpo.heads.base import grid_of
from tpo.heads.grounding import GroundingDecoder

D, DV, B, T, N = 16, 12, 2, 3, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _decoder(temporal: bool) -> GroundingDecoder:
    torch.manual_seed(0)
    return GroundingDecoder(
        embed_dim=D, visual_dim=DV, hidden_dim=32, num_heads=4, num_layers=2, dim_feedforward=64,
        dropout=0.0, temporal=temporal,
    ).eval()


def _inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(B, D, generator=generator), torch.randn(B, T, N, DV, generator=generator)


@pytest.mark.parametrize("temporal", [False, True])
def test_frames_are_independent_only_without_temporal_layers(temporal):
    decoder = _decoder(temporal)
    task, frames = _inputs()
    with torch.no_grad():
        memory = decoder.embed_frames(frames, (4, 4))
        query = decoder.embed_task(task)[:, None].expand(-1, T, -1)
        hidden, boxes, logits = decoder(query, memory, (4, 4))
        _, first_boxes, first_logits = decoder(query[:, :1], memory[:, :1], (4, 4))
    assert hidden.shape == (B, T, 32) and boxes.shape == (B, T, 4) and logits.shape == (B, T, N)
    same = torch.allclose(boxes[:, :1], first_boxes, atol=1e-6)
    same = same and torch.allclose(logits[:, :1], first_logits, atol=1e-6)
    assert same != temporal  # temporal layers let the other frames move the first frame's box


def test_box_head_is_the_one_frame_decoder():
    head = BoxHead(embed_dim=D, visual_dim=DV, hidden_dim=32, num_heads=4, dim_feedforward=64).eval()
    task, frames = _inputs()
    with torch.no_grad():
        output = head(task, frames[:, 0])
        decoder = head.decoder
        memory = decoder.embed_frames(frames[:, :1], (4, 4))
        _, boxes, logits = decoder(decoder.embed_task(task)[:, None], memory, (4, 4))
    torch.testing.assert_close(output.boxes, boxes[:, 0])
    torch.testing.assert_close(output.patch_logits, logits[:, 0])
    tracker = TrackingHead(embed_dim=D, visual_dim=DV, hidden_dim=32, num_heads=4, dim_feedforward=64)
    assert all(isinstance(layer, torch.nn.Identity) for layer in head.decoder.temporal)
    assert all(isinstance(layer, torch.nn.TransformerEncoderLayer) for layer in tracker.decoder.temporal)


def test_grid_of():
    assert grid_of(16, None, "frames") == (4, 4)
    assert grid_of(12, (3, 4), "frames") == (3, 4)
    with pytest.raises(ValueError, match="frames: 12 tokens are not a square grid"):
        grid_of(12, None, "frames")
    with pytest.raises(ValueError, match=r"frames: grid_size \(3, 5\) does not hold 12 tokens"):
        grid_of(12, (3, 5), "frames")

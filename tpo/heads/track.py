"""Tracking head: a box and a visibility logit per frame from the task embedding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tpo.heads.base import MLP, CountedLoss, check_shape, grid_of, meta_size, sine_position_1d
from tpo.heads.grounding import GroundingDecoder, box_targets
from tpo.losses.track import TrackingCriterion
from tpo.ops.boxes import boxes_to_pixels, check_normalized_boxes, patch_centers

__all__ = ["TrackingHead", "TrackingOutput", "TrackingPrediction", "box_window"]

_WHOLE_FRAME = (0.5, 0.5, 1.0, 1.0)
"""Normalised (cx, cy, w, h) of the whole frame: the template window of a sample without a box."""


@dataclass
class TrackingOutput:
    """Raw output of :class:`TrackingHead`.

    Attributes:
        boxes: ``(B, T, 4)`` normalised (cx, cy, w, h) per frame.
        visible: ``(B, T)`` visibility logits.
        patch_logits: ``(B, T, N)`` where the object is in each frame, on ``grid_size``.
    """

    boxes: Tensor
    visible: Tensor
    patch_logits: Tensor | None = None
    grid_size: tuple[int, int] | None = None


@dataclass
class TrackingPrediction:
    """One track in the LaSOT/GOT-10k result format.

    Attributes:
        boxes_xywh: ``(T, 4)`` (x, y, w, h) pixels per frame.
        visible: ``(T,)`` bool, visibility probability above the head's ``visible_threshold``.
        scores: ``(T,)`` visibility probability.
    """

    boxes_xywh: Tensor
    visible: Tensor
    scores: Tensor


def box_window(boxes: Tensor, height: int, width: int) -> Tensor:
    """Gaussian weights over a patch grid centred on each box, one standard deviation = half the
    box side (at least half a patch).

    Args:
        boxes: ``(B, 4)`` normalised (cx, cy, w, h).
        height, width: the patch grid.

    Returns:
        ``(B, height * width)`` weights summing to 1, row-major over the grid.
    """
    centers = patch_centers(height, width, boxes.device)  # (N, 2) x, y
    box = boxes.float()[:, None]  # (B, 1, 4)
    sigma = torch.maximum(box[..., 2:] / 2, centers.new_tensor([0.5 / width, 0.5 / height]))
    distance = ((centers - box[..., :2]) / sigma) ** 2  # (B, N, 2)
    return (-0.5 * distance.sum(-1)).softmax(-1)


class TrackingHead(CountedLoss, nn.Module):
    """Per-frame queries from the task embedding, alternating spatial and temporal attention.

    Each frame gets one query: the projected task embedding (which carries the initial box
    given to the LLM) plus a sine encoding of the frame's time. The
    :class:`~tpo.heads.grounding.GroundingDecoder` runs ``num_layers`` blocks in which every
    query cross-attends to its own frame's tokens (2-D sine positions on the patch grid), then
    self-attends across the ``T`` queries of the clip, and localises each frame's box. A linear
    layer on the decoded query gives the visibility logit.

    Given ``prompt_boxes`` (the first-frame box of the question, as a tracker is given it), every
    query also gets the target's *template*, the first frame's tokens pooled with a Gaussian
    window over the box (a Siamese tracker's exemplar: what to look for), and the first frame's
    query gets the box itself through an MLP (where it is). The first frame's output box is then
    the given box, as trackers report it (the GOT-10k toolkit's ``Tracker.track`` and pytracking
    both return the initial box for frame 0).

    Args:
        embed_dim: ``D``, size of the task embedding.
        visual_dim: ``D_v``, size of the frame tokens.
        hidden_dim: transformer width.
        num_heads: attention heads.
        num_layers: spatial + temporal blocks.
        dim_feedforward: feed-forward width.
        dropout: dropout in the transformer layers.
        visible_threshold: visibility probability above which ``postprocess`` calls a frame
            visible.
        criterion: the loss; default :class:`TrackingCriterion` (L1 5, GIoU 2, deltas 1, patch KL 1,
            visibility 1).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        visual_dim: int,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_layers: int = 2,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        visible_threshold: float = 0.5,
        criterion: TrackingCriterion | None = None,
    ):
        super().__init__()
        self.embed_dim, self.visual_dim, self.hidden_dim = embed_dim, visual_dim, hidden_dim
        self.visible_threshold = visible_threshold
        self.decoder = GroundingDecoder(
            embed_dim=embed_dim,
            visual_dim=visual_dim,
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            num_layers=num_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            temporal=True,
        )
        self.template_proj = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, hidden_dim))
        self.prompt_box_embed = MLP(in_dim=4, hidden_dim=hidden_dim, out_dim=hidden_dim, num_layers=2)
        self.visible_head = nn.Linear(hidden_dim, 1)
        self.criterion = criterion if criterion is not None else TrackingCriterion()

    def forward(
        self,
        task_embeds: Tensor,
        frames: Tensor,
        grid_size: tuple[int, int] | None = None,
        prompt_boxes: Tensor | None = None,
    ) -> TrackingOutput:
        """Track the object described by the task embedding.

        Args:
            task_embeds: ``(B, D)`` task embedding (LLM hidden state at the tracking token).
            frames: ``(B, T, N, D_v)`` per-frame visual tokens, row-major over the patch grid.
            grid_size: ``(h, w)`` with ``h * w = N``; default a square grid.
            prompt_boxes: ``(B, 4)`` normalised (cx, cy, w, h) of the target in the first frame;
                a row of NaN where a sample has no box (its template is the whole first frame and
                its first-frame box is predicted). ``None`` is a NaN row for every sample, so a
                sample's output never depends on whether its batchmates have boxes.
        """
        sizes = check_shape(task_embeds, "task_embeds", ("B", "D"), {"D": (self.embed_dim, "embed_dim")})
        sizes.update(
            check_shape(
                frames, "frames", (sizes["B"], "T", "N", "D_v"), {"D_v": (self.visual_dim, "visual_dim")}
            )
        )
        batch, length = sizes["B"], sizes["T"]
        grid = grid_of(sizes["N"], grid_size, "frames")
        if prompt_boxes is None:
            prompt_boxes = frames.new_full((batch, 4), float("nan"))
        check_shape(prompt_boxes, "prompt_boxes", (batch, 4))
        given = ~prompt_boxes.isnan().all(-1)  # (B,)
        check_normalized_boxes(prompt_boxes, "prompt_boxes", valid=given)
        memory = self.decoder.embed_frames(frames, grid)  # (B, T, N, hidden)
        time = sine_position_1d(length, self.hidden_dim, frames.device)
        query = self.decoder.embed_task(task_embeds)[:, None] + time  # (B, T, hidden)
        first_frame = (torch.arange(length, device=frames.device) == 0)[None, :, None]  # (1, T, 1)
        window_boxes = torch.where(given[:, None], prompt_boxes, prompt_boxes.new_tensor(_WHOLE_FRAME))
        template = (box_window(window_boxes, *grid)[..., None] * memory[:, 0]).sum(1)
        query = query + self.template_proj(template)[:, None]
        box_embed = self.prompt_box_embed(window_boxes.to(query.dtype)) * given[:, None]
        query = query + first_frame * box_embed[:, None]
        hidden, boxes, logits = self.decoder(query, memory, grid)
        keep_given = first_frame & given[:, None, None]
        boxes = torch.where(keep_given, prompt_boxes[:, None].to(boxes.dtype), boxes)
        return TrackingOutput(
            boxes=boxes, visible=self.visible_head(hidden)[..., 0], patch_logits=logits, grid_size=grid
        )

    def loss_counts(self, output: TrackingOutput, targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Visible ``"boxes"`` and all ``"frames"``: what the terms average over."""
        return self.criterion.counts(targets["visible"])

    def loss(
        self,
        output: TrackingOutput,
        targets: Mapping[str, Tensor],
        *,
        normalizers: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted ``loss_bbox``, ``loss_giou``, ``loss_delta``, ``loss_patch`` (visible frames) and
        ``loss_visible``; weights in :attr:`weight_dict`.

        Args:
            output: this head's forward output.
            targets: ``"boxes"`` ``(B, T, 4)`` normalised cxcywh (any value on invisible
                frames), ``"visible"`` ``(B, T)`` bool.
            normalizers: the denominators of the terms' means over all processes
                (:mod:`tpo.losses.normalizers`); default this batch's :meth:`loss_counts`.
        """
        boxes, visible = box_targets(targets, output.boxes, output.visible)
        return self.criterion(
            output.boxes,
            output.visible,
            boxes,
            visible,
            patch_logits=output.patch_logits,
            grid_size=output.grid_size,
            normalizers=normalizers,
        )

    @torch.no_grad()
    def postprocess(
        self, output: TrackingOutput, meta: Sequence[Mapping[str, Any]]
    ) -> list[TrackingPrediction]:
        """Per-frame xywh pixels and visibility.

        Args:
            output: this head's forward output.
            meta: ``B`` dicts with ``"image_size"``: ``(height, width)`` in pixels.
        """
        predictions = []
        for b in range(output.boxes.shape[0]):
            image_size = meta_size(meta, b, "image_size")
            scores = output.visible[b].detach().float().sigmoid().cpu()
            predictions.append(
                TrackingPrediction(
                    boxes_xywh=boxes_to_pixels(output.boxes[b].detach(), image_size, fmt="xywh").cpu(),
                    visible=scores > self.visible_threshold,
                    scores=scores,
                )
            )
        return predictions

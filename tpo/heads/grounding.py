"""The grounding decoder shared by the box head (one frame) and the tracking head (``T`` frames).

Task queries cross-attend to their frame's patch tokens, optionally attend to each other across
the frames of a clip, and a :class:`~tpo.heads.localizer.PatchLocalizer` turns each into a box
and patch scores. :func:`box_targets` is the targets check both heads' losses start with.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from tpo.heads.base import check_shape, sine_position_2d
from tpo.heads.localizer import PatchLocalizer
from tpo.ops.boxes import check_normalized_boxes

__all__ = ["GroundingDecoder", "box_targets"]


class GroundingDecoder(nn.Module):
    """Per-frame task queries -> normalised boxes on the frames' patch grids.

    ``embed_task`` and ``embed_frames`` project the task embedding and the frame tokens (plus
    2-D sine positions of the patch grid) to ``hidden_dim``. Each of ``num_layers`` blocks lets
    every frame's query cross-attend to its own frame's tokens (``spatial``, a pre-norm
    transformer decoder layer) and then, with ``temporal``, self-attend across the ``T`` queries
    of its clip (``temporal``, a pre-norm encoder layer). After a final LayerNorm the localizer
    scores the patches and places the box.

    Args:
        embed_dim: ``D``, size of the task embedding.
        visual_dim: ``D_v``, size of the frame tokens.
        hidden_dim: width of the queries and the layers.
        num_heads: attention heads.
        num_layers: decoder blocks.
        dim_feedforward: feed-forward width.
        dropout: dropout in the transformer layers.
        temporal: attend across the frames of a clip in every block (off: frames independent).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        visual_dim: int,
        hidden_dim: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int,
        dropout: float,
        temporal: bool,
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.task_proj = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden_dim))
        self.visual_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, hidden_dim))

        def block(cls: type[nn.Module]) -> nn.ModuleList:
            return nn.ModuleList(
                cls(hidden_dim, num_heads, dim_feedforward, dropout, batch_first=True, norm_first=True)
                for _ in range(num_layers)
            )

        self.spatial = block(nn.TransformerDecoderLayer)
        identity = nn.ModuleList(nn.Identity() for _ in range(num_layers))
        self.temporal = block(nn.TransformerEncoderLayer) if temporal else identity
        self.norm = nn.LayerNorm(hidden_dim)
        self.localizer = PatchLocalizer(hidden_dim=hidden_dim)

    def embed_task(self, task_embeds: Tensor) -> Tensor:
        """``task_embeds (B, D)`` -> ``(B, hidden_dim)``."""
        return self.task_proj(task_embeds)

    def embed_frames(self, frames: Tensor, grid_size: tuple[int, int]) -> Tensor:
        """``frames (B, T, N, D_v)`` row-major on the ``grid_size`` grid -> ``(B, T, N, hidden_dim)``."""
        return self.visual_proj(frames) + sine_position_2d(*grid_size, self.hidden_dim, frames.device)

    def forward(
        self, query: Tensor, memory: Tensor, grid_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decode one box per query.

        Args:
            query: ``(B, T, hidden_dim)`` one query per frame.
            memory: ``(B, T, N, hidden_dim)`` the frames' embedded tokens (:meth:`embed_frames`).
            grid_size: ``(h, w)`` with ``h * w = N``.

        Returns:
            hidden: ``(B, T, hidden_dim)`` normalised decoded queries.
            boxes: ``(B, T, 4)`` normalised (cx, cy, w, h).
            patch_logits: ``(B, T, N)`` where the object is in each frame.
        """
        batch, length = query.shape[:2]
        memory = memory.flatten(0, 1)  # (B T, N, d)
        for spatial, temporal in zip(self.spatial, self.temporal, strict=True):
            query = spatial(query.reshape(batch * length, 1, -1), memory)
            query = temporal(query.reshape(batch, length, -1))
        hidden = self.norm(query)
        boxes, logits = self.localizer(hidden.flatten(0, 1), memory, grid_size)
        return hidden, boxes.unflatten(0, (batch, length)), logits.unflatten(0, (batch, length))


def box_targets(
    targets: Mapping[str, Tensor], boxes: Tensor, visible: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """The checked box targets of a head's ``boxes (B, [T,] 4)`` and, for a tracker,
    ``visible (B, T)`` logits.

    Returns:
        ``targets["boxes"]`` (same shape as ``boxes``) and ``targets["visible"]`` as bool
        (``None`` without ``visible``).

    Raises:
        ValueError: naming the target for a missing key, a wrong shape, or a (visible) box that
            is not normalised cxcywh with ``w, h > 0`` inside [0, 1] (NaN included).
    """
    layout = {"boxes": "(B, 4) normalised cxcywh"}
    if visible is not None:
        layout = {"boxes": "(B, T, 4) normalised cxcywh", "visible": "(B, T) bool"}
    if not isinstance(targets, Mapping):
        want = " and ".join(f"{key!r} ({desc})" for key, desc in layout.items())
        raise ValueError(f"targets: expected a dict with {want}, got {type(targets).__name__}")
    for key, desc in layout.items():
        if key not in targets:
            raise ValueError(f"targets: missing key {key!r} ({desc})")
    check_shape(targets["boxes"], "targets['boxes']", tuple(boxes.shape))
    flags = None
    if visible is not None:
        check_shape(targets["visible"], "targets['visible']", tuple(visible.shape))
        flags = targets["visible"].bool()
    check_normalized_boxes(targets["boxes"], "targets['boxes']", valid=flags)
    return targets["boxes"], flags

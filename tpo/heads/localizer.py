"""Patch localisation shared by the box and tracking heads.

A query scores every patch of its frame (scaled dot product); the box centre is the
softmax-weighted mean of the patch centres plus a learned offset of at most one patch, and the
box size comes from an MLP. The patch scores are supervised densely (``loss_patch``: KL from the
target box's distribution over the patches, each weighing the box area it covers), the spatial
counterpart of Moment-DETR's per-clip saliency (:func:`tpo.losses.box.patch_kl_loss`), which
makes grounding learn from far fewer samples than box regression alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tpo.heads.base import DETR_MLP_LAYERS, MLP
from tpo.ops.boxes import patch_centers

__all__ = ["PatchLocalizer"]


class PatchLocalizer(nn.Module):
    """Query + patch memory -> box and patch scores.

    ``forward(query (M, d), memory (M, N, d), grid_size (h, w))`` -> ``boxes (M, 4)`` normalised
    cxcywh and ``logits (M, N)``.
    """

    def __init__(self, *, hidden_dim: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(hidden_dim, hidden_dim)
        self.key_proj = nn.Linear(hidden_dim, hidden_dim)
        self.box_mlp = MLP(in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=4, num_layers=DETR_MLP_LAYERS)

    def forward(self, query: Tensor, memory: Tensor, grid_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        height, width = grid_size
        logits = torch.einsum("md,mnd->mn", self.query_proj(query), self.key_proj(memory))
        logits = logits / math.sqrt(query.shape[-1])
        anchor = logits.float().softmax(-1) @ patch_centers(height, width, query.device)
        raw = self.box_mlp(query).float()
        step = anchor.new_tensor([1.0 / width, 1.0 / height])
        center = (anchor + torch.tanh(raw[:, :2]) * step).clamp(0, 1)
        size = raw[:, 2:].sigmoid()
        return torch.cat((center, size), -1).to(query.dtype), logits

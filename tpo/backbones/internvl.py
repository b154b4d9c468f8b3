"""Hugging Face's InternVL (``model_type`` ``internvl``: InternVL 2.5 / 3 / 3.5 converted to the
transformers format) as a TPO backbone.

InternVL reads every image and every video frame as image *tiles* (``image_size`` pixels square):
its InternViT tower encodes a tile, a pixel shuffle (``downsample_ratio``, 0.5: each 2x2 block of
patches becomes one token of 4x the width) shrinks the patch grid, and an MLP projector maps the
tokens to the LLM width. In the text a tile is a run of ``<IMG_CONTEXT>`` tokens between ``<img>``
and ``</img>``:

- an image is one run of ``tiles * image_seq_length`` tokens; with dynamic tiling (a non-square
  image) the run holds the crops of a tile canvas and, last, a thumbnail of the whole image;
- a video marker (``<video>``) expands to ``Frame1: <img>...</img>\\nFrame2: ...``: one run of
  one tile per frame.

The processor puts the tiles of the whole batch, in the order of the runs, in ``pixel_values``.
The backbone encodes them once with the model's own ``get_image_features`` and hands the result
to the model through ``mm_encoder_outputs``, so nothing is encoded twice. The heads see one frame
per run: a video frame, or an image's last tile (the thumbnail of a tiled image, the image itself
when it fits one tile); the crops reach the LLM only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import BatchFeature

from tpo.backbones.base import EncodedVisual, group_frames, register_backbone
from tpo.backbones.hf import HFBackbone, WrappedProcessor

__all__ = ["InternVLBackbone", "InternVLFamilyProcessor", "SUPPORTED_MODEL_TYPES"]

SUPPORTED_MODEL_TYPES = ("internvl",)



class InternVLFamilyProcessor(WrappedProcessor):
    """An ``InternVLProcessor`` as the collator uses it.

    Texts carry :attr:`image_token` (``<IMG_CONTEXT>``) once per image and :attr:`video_token`
    (``<video>``) once per video; the wrapped processor expands each to its ``<img>...</img>``
    runs. Videos are ``(T, H, W, 3)`` uint8 arrays, all of one batch with the same ``T``.

    Args:
        processor: the Hugging Face ``InternVLProcessor``.
    """

    def __init__(self, processor: Any) -> None:
        super().__init__(processor)
        self.image_token: str = processor.image_token
        self.video_token: str = processor.video_token

    def __call__(
        self,
        text: list[str] | str,
        images: list | None = None,
        videos: list | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenise ``text`` and encode ``images`` (``(H, W, 3)`` uint8) and ``videos``.

        Padding goes on the tokenizer's current ``padding_side``.

        Returns:
            ``input_ids (B, L)``, ``attention_mask (B, L)`` and ``pixel_values (F, 3, S, S)``: the
            tiles of every image and video frame of the batch, in the order of the text's runs.
        """
        texts = [text] if isinstance(text, str) else list(text)
        kwargs.setdefault("return_tensors", "pt")
        kwargs.setdefault("padding", True)
        return self.processor(text=texts, images=images or None, videos=videos or None, **kwargs)


@register_backbone(SUPPORTED_MODEL_TYPES)
class InternVLBackbone(HFBackbone):
    """An InternVL model (``InternVLForConditionalGeneration``; a Qwen2, Qwen3 or LLaMA LLM) with TPO
    task tokens.

    Args:
        model: an ``InternVLForConditionalGeneration``.
        processor: its ``InternVLProcessor``, or an :class:`InternVLFamilyProcessor`.
        task_tokens: task tokens to attach (see :class:`~tpo.backbones.hf.HFBackbone`).

    ``forward(batch)`` reads ``input_ids (B, L)``, ``attention_mask (B, L)``, optional
    ``labels (B, L)`` (-100 where ignored), ``pixel_values (F, 3, S, S)`` (the tiles, as the
    processor returns them) and ``prompt_boxes (K, 4)`` for ``<track_box>`` tokens. Its ``visual``
    output is ``(B, T, N, D)``: one frame per ``<img>`` run of a sample (a video's frames, an
    image's thumbnail tile; see the module docstring), ``N = h' * w'`` tokens on the pixel-shuffled
    grid ``visual_grid = (h', w')`` (``h' = S / patch * downsample_ratio``), after the projector, in
    the LLM width (``visual_dim = D``). ``frames (B, T, 3, S, S)`` are those tiles, normalised.
    Images and videos may share a batch: a frame is a tile either way.
    """

    supported_model_types = SUPPORTED_MODEL_TYPES

    def wrap_processor(self, processor: Any) -> InternVLFamilyProcessor:
        if isinstance(processor, InternVLFamilyProcessor):
            return processor
        return InternVLFamilyProcessor(processor)

    @property
    def video_token_id(self) -> int:
        """Id of the ``<video>`` marker (expanded by the processor; never in a processed batch)."""
        return self.tokenizer.convert_tokens_to_ids(self.processor.video_token)

    def visual_token_ids(self) -> list[int]:
        """``<IMG_CONTEXT>``: ``<img>`` / ``</img>`` and the frame labels are text."""
        return [self.image_token_id]

    def media_token_ids(self) -> list[int]:
        """``<IMG_CONTEXT>``, ``<video>`` and the ``<img>`` / ``</img>`` markers around each tile run."""
        markers = self.tokenizer.convert_tokens_to_ids(["<img>", "</img>"])
        return [self.image_token_id, self.video_token_id, *markers]

    # ------------------------------------------------------------------ visual features
    def _tile_runs(self, input_ids: Tensor, tokens_per_tile: int) -> tuple[Tensor, Tensor]:
        """The ``<IMG_CONTEXT>`` runs of ``input_ids (B, L)``, in row-major order (the order of the
        tiles in ``pixel_values``).

        Returns:
            ``(R,)`` tiles per run and ``(R,)`` the sample of each run.

        Raises:
            ValueError: a run's length is not a multiple of ``tokens_per_tile``.
        """
        padded = F.pad(input_ids == self.image_token_id, (1, 1)).long()  # (B, L + 2)
        edges = padded.diff(dim=1)  # +1 where a run starts, -1 after it ends
        starts, ends = (edges == 1).nonzero(), (edges == -1).nonzero()
        lengths = ends[:, 1] - starts[:, 1]
        bad = (lengths % tokens_per_tile).nonzero().flatten()
        if len(bad):
            sample, length = int(starts[bad[0], 0]), int(lengths[bad[0]])
            raise ValueError(
                f"input_ids: sample {sample} has a run of {length} {self.processor.image_token} tokens, "
                f"not a multiple of the {tokens_per_tile} tokens of one tile"
            )
        return lengths // tokens_per_tile, starts[:, 0]

    def encode_visual(self, batch: dict) -> EncodedVisual:
        """Encode the batch's tiles once.

        Returns:
            ``mm_encoder_outputs`` for the model (``{"image": ...}``, every tile) and the fields
            ``visual (B, T, N, D)``, ``visual_mask (B, T)``, ``visual_grid`` and ``frames (B, T, 3, S,
            S)``, one frame per run (its last tile); nothing for a text-only batch.

        Raises:
            ValueError: the runs of ``input_ids`` ask for another number of tiles than
                ``pixel_values`` holds.
        """
        input_ids = self.require(batch, "input_ids")
        pixel_values = batch.get("pixel_values")
        if pixel_values is None:
            return EncodedVisual()
        encoded = self.model.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        tiles = encoded.pooler_output  # (F, N, D)
        per_run, sample = self._tile_runs(input_ids, tiles.shape[1])
        if int(per_run.sum()) != tiles.shape[0]:
            counts = per_run.new_zeros(input_ids.shape[0]).index_add_(0, sample, per_run)
            raise ValueError(
                f"input_ids: {int(per_run.sum())} tiles of {self.processor.image_token} placeholders "
                f"({counts.tolist()} per sample) but pixel_values holds {tiles.shape[0]} tiles"
            )
        last = per_run.cumsum(0) - 1
        frames_per_sample = torch.bincount(sample, minlength=input_ids.shape[0]).tolist()
        visual, mask = group_frames(tiles[last], frames_per_sample, name="visual tokens")
        frames, _ = group_frames(pixel_values[last], frames_per_sample, name="frames")
        fields = {"visual": visual, "visual_mask": mask, "visual_grid": self.grid_size(visual.shape[2]),
                  "frames": frames}
        return EncodedVisual({"image": encoded}, fields)

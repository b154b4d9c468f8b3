"""Turn task items into the batch a backbone consumes.

The collator renders each item's turns in a chat format, puts the processor's image/video
markers in, tokenises with ``processor(text=..., images=..., videos=...)`` (which expands each
marker to the right number of visual tokens and pads on the tokenizer's side), sets ``labels`` to
-100 everywhere but the answers, and gathers per-task targets in the heads' internal units.

Batch (``B`` samples, ``L`` tokens):

- ``input_ids (B, L)``, ``attention_mask (B, L)``, ``labels (B, L)`` (-100 off the answers);
- ``pixel_values`` / ``pixel_values_videos`` and any other processor output;
- ``query_ids (B, Lq)`` and ``query_mask (B, Lq)`` bool: each item's ``query`` (the expression
  its instruction names) tokenised on its own, padded on the right; only when an item has one;
- ``prompt_boxes (K, 4)`` normalised cxcywh, one per input-box token in row-major order of
  (sample, position), and ``prompt_box_sample (K,)`` the sample of each;
- ``targets``: ``{task: {...}}``, each with ``sample_index (n,)`` long:
  temporal ``spans`` (list of ``(m, 2)`` cxw), ``saliency (n, T)`` and ``per_sample`` (the same
  as ``n`` dicts ``{"spans", "saliency"}``, the form ``TemporalGroundingHead.loss`` takes);
  box ``boxes (n, 4)`` cxcywh; track ``boxes (n, T, 4)`` cxcywh and ``visible (n, T)`` bool;
  mask ``masks (n, T, H, W)`` bool;
- ``meta``: one dict per sample (``id``, ``task``, ``duration`` s, ``frame_size`` (H, W) px,
  ``timestamps`` s) to bring predictions back to seconds and pixels;
- ``tasks``: the task of each sample; ``skipped``: messages of samples skipped on load errors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tpo.chat import ChatFormat
from tpo.tasks import get_task

__all__ = ["ChatFormat", "TaskCollator"]

VIDEO_MARKER, IMAGE_MARKER = "<video>", "<image>"


def _to_tensor(x, dtype=None) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _prompt_boxes(item: dict) -> np.ndarray:
    """An item's ``prompt_boxes`` as ``(k, 4)`` float32, ``(0, 4)`` without any."""
    boxes = item.get("prompt_boxes")
    return np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)


class TaskCollator:
    """Collate task items (from :mod:`tpo.datamodules.datasets`) into a backbone batch.

    Args:
        processor: a Hugging Face style processor with ``image_token`` / ``video_token``.
        tokenizer: the processor's tokenizer (default ``processor.tokenizer``), used to locate
            the answers; it must tokenise like the processor does.
        chat: the chat format (default :class:`ChatFormat`).
        add_eos: end every answer with the tokenizer's EOS token (part of the labels).
        padding_side: ``"left"`` / ``"right"`` to override the tokenizer's side while collating.
        generation: leave the last answer out and end the text with the assistant prefix (for
            generation; labels are then all -100).
        images_as_videos: give images to the processor as still videos (the image repeated to
            the batch's longest video, one frame without videos; the ``<image>`` marker becomes
            the video marker), for backbones whose image and video paths yield different token
            counts per frame and so cannot share a batch.
        keep_media: also put each sample's frames ``(T, H, W, 3)`` uint8 in its ``meta`` as
            ``"frames"`` (for drawing predictions).
    """

    def __init__(
        self,
        *,
        processor,
        tokenizer=None,
        chat: ChatFormat | None = None,
        add_eos: bool = True,
        padding_side: str | None = None,
        generation: bool = False,
        images_as_videos: bool = False,
        keep_media: bool = False,
    ) -> None:
        if chat is not None and chat.assistant.endswith(" "):
            raise ValueError("chat.assistant must not end with a space (put it in chat.answer_lead)")
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side: expected 'left', 'right' or None, got {padding_side!r}")
        self.processor = processor
        self.keep_media = keep_media
        self.tokenizer = tokenizer if tokenizer is not None else processor.tokenizer
        self.chat = chat or ChatFormat()
        self.add_eos = add_eos
        self.padding_side = padding_side
        self.generation = generation
        self.images_as_videos = images_as_videos

    @classmethod
    def from_backbone(cls, backbone, **kwargs) -> TaskCollator:
        """A collator for ``backbone.processor`` and ``backbone.tokenizer``, in the backbone's chat
        format (:meth:`~tpo.backbones.Backbone.chat_format`) unless ``chat`` is given."""
        kwargs["chat"] = kwargs.get("chat") or backbone.chat_format()
        return cls(processor=backbone.processor, tokenizer=backbone.tokenizer, **kwargs)

    # ------------------------------------------------------------------ text
    @staticmethod
    def _as_video(item: dict, num_frames: int) -> dict:
        if item.get("image") is None:
            return item
        turns = [(u.replace(IMAGE_MARKER, VIDEO_MARKER), a) for u, a in item["turns"]]
        video = np.repeat(np.asarray(item["image"])[None], num_frames, axis=0)
        return {**item, "image": None, "video": video, "turns": turns}

    def _segments(self, item: dict) -> list[tuple[str, bool]]:
        """``(text, is_answer)`` pieces of one item's conversation."""
        marker = (
            VIDEO_MARKER
            if item.get("video") is not None
            else IMAGE_MARKER
            if item.get("image") is not None
            else None
        )
        turns = [list(t) for t in item["turns"]]
        joined = "".join(u for u, _ in turns)
        if marker and marker not in joined:
            turns[0][0] = f"{marker}\n{turns[0][0]}"
        count = {m: sum(u.count(m) for u, _ in turns) for m in (VIDEO_MARKER, IMAGE_MARKER)}
        expected = {VIDEO_MARKER: int(marker == VIDEO_MARKER), IMAGE_MARKER: int(marker == IMAGE_MARKER)}
        if count != expected:
            raise ValueError(
                f"sample {item.get('id')}: the text has {count} media markers for media {expected}"
            )
        eos = self.chat.answer_end if self.chat.answer_end is not None else self.tokenizer.eos_token or ""
        if not self.add_eos:
            eos = ""
        pieces = [(self.chat.system, False)]
        for j, (user, answer) in enumerate(turns):
            if marker == VIDEO_MARKER:
                user = user.replace(VIDEO_MARKER, self.processor.video_token)
            elif marker == IMAGE_MARKER:
                user = user.replace(IMAGE_MARKER, self.processor.image_token)
            pieces.append((self.chat.user + user + self.chat.assistant, False))
            last = j == len(turns) - 1
            if last and self.generation:
                break
            pieces.append((self.chat.answer_lead + answer.strip() + eos, True))
            if not last:
                pieces.append((self.chat.turn_end, False))
        return [(text, target) for text, target in pieces if text]

    def _answer_spans(
        self, all_pieces: list[list[tuple[str, bool]]], item_ids: list
    ) -> list[tuple[list[tuple[int, int]], list[int], int]]:
        """Answer token ranges counted from the text's end, in the tokenizer's tokens.

        Every prefix of every text is tokenised in one batched call.

        Returns, per item:
            ranges: ``(start, end)`` of every answer, as offsets from the end of the text tokens.
            tail: the tokens from the first answer to the end (for the alignment check).
            trailing: special tokens the tokenizer appends after the text.
        """
        tok = self.tokenizer
        prefixes = []
        for pieces in all_pieces:
            acc = ""
            for text, _ in pieces:
                acc += text
                prefixes.append(acc)
        prefix_ids = iter(tok(prefixes, add_special_tokens=False)["input_ids"])
        fulls = tok(["".join(t for t, _ in pieces) for pieces in all_pieces])["input_ids"]
        out = []
        for pieces, with_special, item_id in zip(all_pieces, fulls, item_ids, strict=True):
            steps = [next(prefix_ids) for _ in pieces]
            ids = steps[-1]
            lead = next(
                (k for k in range(len(with_special) - len(ids) + 1) if with_special[k : k + len(ids)] == ids),
                None,
            )
            if lead is None:
                raise ValueError(
                    f"sample {item_id}: the tokenizer's special tokens interleave "
                    "with the text; cannot locate the answers"
                )
            trailing = len(with_special) - lead - len(ids)
            ranges, first, start = [], None, 0
            for (text, target), step in zip(pieces, steps, strict=True):
                end = len(step)
                if ids[:end] != step:
                    raise ValueError(
                        f"sample {item_id}: tokens merge across the boundary before "
                        f"{text!r}; make the chat format separate the pieces"
                    )
                if target:
                    ranges.append((len(ids) - start, len(ids) - end))
                    first = start if first is None else first
                start = end
            out.append((ranges, ids[first:] if first is not None else [], trailing))
        return out

    # ------------------------------------------------------------------ batch
    def __call__(self, items: Sequence[dict]) -> dict:
        if not items:
            raise ValueError("collate: no items")
        images, videos = [], []
        if self.images_as_videos:
            frames = max((len(it["video"]) for it in items if it.get("video") is not None), default=1)
            items = [self._as_video(item, frames) for item in items]
        all_pieces = [self._segments(item) for item in items]
        texts = ["".join(text for text, _ in pieces) for pieces in all_pieces]
        located = self._answer_spans(all_pieces, [item.get("id") for item in items])
        for item in items:
            if item.get("video") is not None:
                videos.append(np.ascontiguousarray(item["video"]))
            elif item.get("image") is not None:
                images.append(np.ascontiguousarray(item["image"]))
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = videos
        old_side = self.tokenizer.padding_side
        if self.padding_side:
            self.tokenizer.padding_side = self.padding_side
        try:
            encoded = dict(self.processor(**kwargs))
        finally:
            self.tokenizer.padding_side = old_side
        input_ids, mask = encoded["input_ids"], encoded["attention_mask"]
        labels = torch.full_like(input_ids, -100)
        for b, ((ranges, tail, trailing), item) in enumerate(zip(located, items, strict=True)):
            valid = mask[b].nonzero().flatten()
            end = int(valid[-1]) + 1 - trailing
            if tail and input_ids[b, end - len(tail) : end].tolist() != tail:
                raise ValueError(
                    f"sample {item.get('id')}: the processor's tokens after the first "
                    "answer differ from the tokenizer's; labels cannot be placed"
                )
            for back_start, back_end in ranges:
                labels[b, end - back_start : end - back_end] = input_ids[b, end - back_start : end - back_end]
        boxes = [_prompt_boxes(item) for item in items]
        box_sample = np.concatenate([np.full(len(b), i) for i, b in enumerate(boxes)])
        encoded.update(
            labels=labels,
            prompt_boxes=_to_tensor(np.concatenate(boxes), torch.float32),
            prompt_box_sample=_to_tensor(box_sample, torch.long),
            targets=self.pack_targets(items),
            meta=[
                item.get("meta", {})
                | {"id": item.get("id"), "task": item["task"]}
                | ({"frames": self._media(item)} if self.keep_media else {})
                for item in items
            ],
            **self._queries(items),
            tasks=[item["task"] for item in items],
            skipped=[msg for item in items for msg in item.get("skipped", [])],
        )
        return encoded

    def _queries(self, items: Sequence[dict]) -> dict:
        """``query_ids`` and ``query_mask`` of the items' queries (a leading space, as the query
        reads inside an instruction); nothing when no item has a query."""
        queries = [(item.get("query") or "").strip() for item in items]
        if not any(queries):
            return {}
        ids = self.tokenizer([" " + q if q else "" for q in queries], add_special_tokens=False)["input_ids"]
        width = max(len(row) for row in ids)
        query_ids = torch.zeros(len(ids), width, dtype=torch.long)
        query_mask = torch.zeros(len(ids), width, dtype=torch.bool)
        for b, row in enumerate(ids):
            query_ids[b, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            query_mask[b, : len(row)] = True
        return {"query_ids": query_ids, "query_mask": query_mask}

    @staticmethod
    def _media(item: dict) -> np.ndarray | None:
        """The sample's frames ``(T, H, W, 3)`` uint8 (an image is one frame), or ``None``."""
        if item.get("video") is not None:
            return np.asarray(item["video"])
        return None if item.get("image") is None else np.asarray(item["image"])[None]

    @staticmethod
    def pack_targets(items: Sequence[dict]) -> dict[str, dict]:
        """``{task: rows}``: each task's targets of ``items`` packed by its task object
        (:meth:`tpo.tasks.Task.pack_targets`) with ``sample_index (n,)``, the items holding them."""
        by_task: dict[str, list[int]] = {}
        for b, item in enumerate(items):
            if item.get("target") is not None:
                by_task.setdefault(item["task"], []).append(b)
        out = {}
        for task, index in by_task.items():
            rows = get_task(task).pack_targets([items[b]["target"] for b in index],
                                               [items[b].get("id") for b in index])
            out[task] = {"sample_index": torch.tensor(index, dtype=torch.long), **rows}
        return out

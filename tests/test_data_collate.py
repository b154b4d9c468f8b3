"""TaskCollator against a small HF-style processor: marker expansion, labels only on the answers
(either padding side, with or without special tokens around the text), task targets, input
boxes; prompts."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tpo.datamodules.collate import ChatFormat, TaskCollator
from tpo.datamodules.prompts import make_prompt
from tpo.tasks import get_task
from tpo.tokens import TaskTokens

CORPUS = ["USER: When is the red circle visible? ASSISTANT: here", "Where is the blue square?",
          "Track the object. Segment the green triangle. What colour is it? left right up down",
          "0 1 2 3 4 5 6 7 8 9 . , ; : [ ] seconds from to"] * 4


def make_tokenizer(post: str | None) -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<video>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if post:
        tok.post_processor = processors.TemplateProcessing(
            single=post, special_tokens=[("<s>", 1), ("</s>", 2)])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    out.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]},
                           replace_extra_special_tokens=False)
    TaskTokens(hidden_size=8).add_to(out)
    return out


class FakeProcessor:
    """HF-style: expands ``<image>`` to 4 tokens and ``<video>`` to 2 tokens per frame."""

    image_token, video_token = "<image>", "<video>"
    per_image, per_frame = 4, 2

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text, images=None, videos=None, return_tensors="pt", padding=True):
        images, videos = list(images or []), list(videos or [])
        it_images, it_videos = iter(images), iter(videos)
        expanded = []
        for t in text:
            parts = re.split(r"(<image>|<video>)", t)
            out = ""
            for p in parts:
                if p == "<image>":
                    next(it_images)
                    out += "<image>" * self.per_image
                elif p == "<video>":
                    out += "<video>" * (self.per_frame * len(next(it_videos)))
                else:
                    out += p
            expanded.append(out)
        assert next(it_images, None) is None and next(it_videos, None) is None
        enc = dict(self.tokenizer(expanded, padding=padding, return_tensors=return_tensors))
        if images:
            enc["pixel_values"] = torch.stack([torch.as_tensor(i).permute(2, 0, 1).float()
                                               for i in images])
        if videos:
            enc["pixel_values_videos"] = torch.stack([torch.as_tensor(v).permute(0, 3, 1, 2).float()
                                                      for v in videos])
        return enc


def _video(t=3, value=0):
    return np.full((t, 8, 8, 3), value, np.uint8)


def items():
    rng = np.random.default_rng(0)
    return [
        {"task": "temporal", "id": "m0", "video": _video(3, 1),
         "turns": [("When is the red circle visible?", "<time_begin><temp>")],
         "target": {"spans": np.array([[0.5, 0.5]]), "saliency": np.array([0, 1, 1.0])},
         "meta": {"duration": 2.0}},
        {"task": "box", "id": "b0", "image": np.zeros((8, 8, 3), np.uint8),
         "turns": [("Where is the blue square?", "<box_begin><boxes>")],
         "target": {"boxes": np.array([0.5, 0.5, 0.2, 0.2])}, "meta": {}},
        {"task": "conversation", "id": "c0", "video": _video(3, 2),
         "turns": [("<video>\nWhat colour is it?", "red"), ("Which way?", "left")],
         "target": None, "meta": {}},
        {"task": "track", "id": "t0", "video": _video(3, 3),
         "turns": [("Track the object at <track_box>.", "<track_begin><tracking>")],
         "prompt_boxes": np.array([[0.3, 0.4, 0.1, 0.2]]),
         "target": {"boxes": rng.random((3, 4)), "visible": np.array([1, 1, 0], bool)},
         "meta": {}},
        {"task": "mask", "id": "s0", "video": _video(3, 4),
         "turns": [("Segment the green triangle.", "<seg_begin><seg>")],
         "target": {"masks": rng.random((3, 8, 8)) > 0.5}, "meta": {}},
    ]


def _label_runs(labels_row: torch.Tensor) -> list[list[int]]:
    runs, current, prev = [], [], None
    for pos in (labels_row != -100).nonzero().flatten().tolist():
        if prev is not None and pos != prev + 1:
            runs.append(current)
            current = []
        current.append(pos)
        prev = pos
    return runs + ([current] if current else [])


@pytest.mark.parametrize("post", [None, "<s> $A", "<s> $A </s>"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_labels_cover_exactly_the_answers(post, side):
    tok = make_tokenizer(post)
    tok.padding_side = side
    batch = TaskCollator(processor=FakeProcessor(tok))(items())
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape and ids.shape[0] == 5
    expected = [[" <time_begin><temp></s>"], [" <box_begin><boxes></s>"], [" red</s>", " left</s>"],
                [" <track_begin><tracking></s>"], [" <seg_begin><seg></s>"]]
    for b in range(5):
        runs = _label_runs(labels[b])
        decoded = [tok.decode(ids[b, run]) for run in runs]
        assert decoded == expected[b]
        assert (labels[b][labels[b] != -100] == ids[b][labels[b] != -100]).all()
        assert not (labels[b] != -100)[mask[b] == 0].any()
        pads = (mask[b] == 0).nonzero().flatten()
        if len(pads):  # padding sits on the requested side
            assert (pads[0] == 0) if side == "left" else (pads[-1] == ids.shape[1] - 1)
    # markers expanded: 2 tokens per frame for the 4 videos, 4 for the image
    video_id, image_id = tok.convert_tokens_to_ids("<video>"), tok.convert_tokens_to_ids("<image>")
    assert (ids == video_id).sum(1).tolist() == [6, 0, 6, 6, 6]
    assert (ids == image_id).sum(1).tolist() == [0, 4, 0, 0, 0]


def test_padding_side_override_and_generation_mode():
    tok = make_tokenizer("<s> $A")
    batch = TaskCollator(processor=FakeProcessor(tok), padding_side="left")(items())
    assert (batch["attention_mask"][:, -1] == 1).all() and tok.padding_side == "right"
    gen = TaskCollator(processor=FakeProcessor(tok), generation=True)(items()[:2])
    assert (gen["labels"] == -100).all()
    text = tok.decode(gen["input_ids"][0][gen["attention_mask"][0] == 1])
    assert text.endswith("ASSISTANT:") and "<temp>" not in text


def test_targets_prompt_boxes_and_meta():
    tok = make_tokenizer(None)
    its = items()
    batch = TaskCollator(processor=FakeProcessor(tok))(its + [its[0] | {"id": "m1"}])
    t = batch["targets"]
    assert set(t) == {"temporal", "box", "track", "mask"}
    assert t["temporal"]["sample_index"].tolist() == [0, 5]
    assert torch.equal(t["temporal"]["spans"][1], torch.tensor([[0.5, 0.5]]))
    assert t["temporal"]["saliency"].shape == (2, 3)
    assert torch.equal(t["temporal"]["per_sample"][1]["saliency"], t["temporal"]["saliency"][1])
    assert t["box"]["boxes"].shape == (1, 4) and t["box"]["sample_index"].tolist() == [1]
    assert t["track"]["boxes"].shape == (1, 3, 4) and t["track"]["visible"].dtype == torch.bool
    assert t["mask"]["masks"].shape == (1, 3, 8, 8) and t["mask"]["masks"].dtype == torch.bool
    box_token = tok.convert_tokens_to_ids("<track_box>")
    assert (batch["input_ids"] == box_token).sum() == batch["prompt_boxes"].shape[0] == 1
    np.testing.assert_allclose(batch["prompt_boxes"][0].numpy(), [0.3, 0.4, 0.1, 0.2])
    assert batch["prompt_box_sample"].tolist() == [3]  # the track item is the fourth
    assert batch["tasks"] == ["temporal", "box", "conversation", "track", "mask", "temporal"]
    assert batch["meta"][0] == {"duration": 2.0, "id": "m0", "task": "temporal"}
    assert batch["pixel_values_videos"].shape == (5, 3, 3, 8, 8)
    assert batch["pixel_values"].shape == (1, 3, 8, 8)


def test_images_as_videos_become_still_clips():
    tok = make_tokenizer(None)
    batch = TaskCollator(processor=FakeProcessor(tok), images_as_videos=True)(items()[:2])
    assert "pixel_values" not in batch and batch["pixel_values_videos"].shape == (2, 3, 3, 8, 8)
    assert (batch["input_ids"] == tok.convert_tokens_to_ids("<video>")).sum(1).tolist() == [6, 6]


def test_bad_batches_are_named():
    tok = make_tokenizer(None)
    collate = TaskCollator(processor=FakeProcessor(tok))
    its = items()
    small = its[4] | {"id": "s1", "target": {"masks": np.zeros((3, 4, 4), bool)}}
    with pytest.raises(ValueError, match=r"targets\['mask'\]\['masks'\].*'s0', 's1'"):
        collate([its[4], small])
    two_markers = its[0] | {"turns": [("<video> and <video>", "x")]}
    with pytest.raises(ValueError, match="sample m0: the text has"):
        collate([two_markers])
    with pytest.raises(ValueError, match="must not end with a space"):
        TaskCollator(processor=FakeProcessor(tok), chat=ChatFormat(assistant=" ASSISTANT: "))


def test_prompts():
    a = make_prompt("temporal", "the red circle appears.", seed=5)
    assert a == make_prompt("temporal", "the red circle appears.", seed=5)
    assert a.answer == "<time_begin><temp>" and "the red circle appears" in a.instruction
    seen = {make_prompt("mask", "x", seed=s).instruction for s in range(40)}
    assert len(seen) == len(get_task("mask").templates)
    track = make_prompt("track", "the cat", template=0)
    assert track.instruction == "Track the cat given at <track_box> through the video."
    assert track.answer == "<track_begin><tracking>"
    text = make_prompt("temporal", "q", textual=True, windows_s=np.array([[1.0, 2.5]]))
    assert text.answer == "from 1.0 to 2.5 seconds"
    box = make_prompt("box", "q", textual=True, box=np.array([0.1, 0.2, 0.5, 0.75]))
    assert box.answer == "[0.10, 0.20, 0.50, 0.75]"
    with pytest.raises(ValueError, match="masks have none"):
        make_prompt("mask", "q", textual=True)
    with pytest.raises(ValueError, match="task"):
        make_prompt("caption", "q")


def test_echo_query_restates_the_query_before_the_task_call():
    plain = make_prompt("box", "the red circle.", seed=3)
    echo = make_prompt("box", "the red circle.", seed=3, echo_query=True)
    assert echo.instruction == plain.instruction and echo.query == plain.query == "the red circle"
    assert echo.answer == "the red circle <box_begin><boxes>"
    text = make_prompt("temporal", "the dog runs", textual=True, echo_query=True,
                       windows_s=np.array([[1.0, 2.5]]))
    assert text.answer == "the dog runs from 1.0 to 2.5 seconds"

"""Chat formats derived from chat templates: the collator writes what the template renders."""

from __future__ import annotations

import numpy as np
import pytest

from tpo.backbones.tiny import tiny_llava, train_tiny_tokenizer
from tpo.chat import ChatFormat, chat_format_from_template
from tpo.datamodules import TaskCollator

QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _tokenizer(template: str, eos: str):
    tok = train_tiny_tokenizer(extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = template
    tok.eos_token = eos
    return tok


def _messages(turns):
    out = []
    for user, answer in turns:
        out.append({"role": "user", "content": [{"type": "text", "text": user}]})
        if answer is not None:
            out.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return out


def _render(chat: ChatFormat, turns, eos: str) -> str:
    text = chat.system
    for j, (user, answer) in enumerate(turns):
        text += chat.user + user + chat.assistant
        if answer is None:
            break
        text += chat.answer_lead + answer + (chat.answer_end if chat.answer_end is not None else eos)
        if j < len(turns) - 1:
            text += chat.turn_end
    return text


def test_qwen_template_splits_into_its_pieces():
    chat = chat_format_from_template(_tokenizer(QWEN2_VL_TEMPLATE, "<|im_end|>"))
    assert chat.system == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>"
    assert chat.user == "\n<|im_start|>user\n"
    assert chat.assistant == "<|im_end|>\n<|im_start|>assistant\n"
    assert (chat.answer_lead, chat.answer_end, chat.turn_end) == ("", "<|im_end|>", "")


@pytest.mark.parametrize("template, eos", [(QWEN2_VL_TEMPLATE, "<|im_end|>"), (LLAVA_15_TEMPLATE, "</s>")])
def test_rendering_with_the_format_equals_the_template(template, eos):
    tok = _tokenizer(template, eos)
    chat = chat_format_from_template(tok)
    turns = [("Where is the red square?", "At the top."), ("And the circle?", "Below it."),
             ("When does it move?", None)]
    expected = tok.apply_chat_template(_messages(turns), tokenize=False, add_generation_prompt=True)
    ours = _render(chat, turns, eos)
    if chat.answer_end is None:  # the template ends answers without a token: ours adds EOS
        assert ours.count(eos) == 2
        ours = ours.replace(eos, "")
    assert ours == expected


def test_llava_15_template_keeps_the_answer_space_out_of_the_prompt():
    chat = chat_format_from_template(_tokenizer(LLAVA_15_TEMPLATE, "</s>"))
    assert chat.assistant == " ASSISTANT:" and chat.answer_lead == " " and chat.answer_end is None


def test_no_template_is_none_and_the_backbone_falls_back_to_llava_15():
    backbone = tiny_llava("llava", tasks=["temporal"])
    assert chat_format_from_template(backbone.tokenizer) is None
    assert backbone.chat_format() == ChatFormat()


def test_a_template_dropping_turns_is_named():
    tok = _tokenizer("{{ messages[-1]['content'][0]['text'] }}", "</s>")
    with pytest.raises(ValueError, match="chat_template: does not render each turn"):
        chat_format_from_template(tok)


def test_the_collator_takes_the_backbone_template_and_labels_the_answer_end():
    backbone = tiny_llava("llava", tasks=["temporal"])
    tok = backbone.tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    backbone.processor.processor.chat_template = QWEN2_VL_TEMPLATE
    tok.eos_token = "<|im_end|>"
    collator = TaskCollator.from_backbone(backbone)
    assert collator.chat == chat_format_from_template(backbone.processor)
    item = {"id": "a", "task": "conversation", "turns": [("Describe the video.", "A red square.")],
            "video": None, "image": None}
    batch = collator([item])
    ids = batch["input_ids"][0]
    labelled = tok.decode(ids[batch["labels"][0] != -100])
    assert labelled == "A red square.<|im_end|>"
    assert tok.decode(ids).startswith("<|im_start|>system\n")
    assert np.all(batch["labels"][0][: int((batch["labels"][0] != -100).nonzero()[0])].numpy() == -100)

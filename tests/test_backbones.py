"""Backbones on tiny models of every supported family: task tokens, gradients, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tpo.backbones import Backbone, LlavaBackbone, VideoChatBackbone
from tpo.backbones.tiny import TINY_LLAVA_KINDS, tiny_llava, tiny_videochat
from tpo.tokens import TaskTokens

KINDS = [*TINY_LLAVA_KINDS, "videochat_timm", "videochat_clip"]


def build(kind: str):
    if kind.startswith("videochat_"):
        return tiny_videochat(kind.split("_")[1])
    return tiny_llava(kind)


def frames_for(kind: str) -> int:
    return 8 if kind == "video_llava" else 4  # VideoLLaVA's video tower reads 8 frames


def make_batch(backbone, kind: str, seed: int = 0) -> dict:
    """Two video samples: a temporal question and a tracking question with an input box; a third
    sample asks for a box and a mask with three task tokens in all."""
    rng = np.random.default_rng(seed)
    videos = [rng.integers(0, 255, (frames_for(kind), 32, 32, 3), dtype=np.uint8) for _ in range(3)]
    v = backbone.processor.video_token
    texts = [
        f"USER: {v} When does the red square appear? ASSISTANT: <time_begin><temp></s>",
        f"USER: {v} Track <track_box> ASSISTANT: <track_begin><tracking></s>",
        f"USER: {v} Where and which pixels? ASSISTANT: <box_begin><boxes> <seg_begin><seg><seg></s>",
    ]
    batch = dict(backbone.processor(text=texts, videos=videos))
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    batch["prompt_boxes"] = torch.tensor([[0.5, 0.4, 0.2, 0.3]])
    return batch


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def test_forward_returns_hidden_states_at_task_tokens(kind):
    backbone = build(kind)
    batch = make_batch(backbone, kind)
    out = backbone(batch)
    input_ids = batch["input_ids"]
    B, L = input_ids.shape
    assert out.hidden_states.shape == (B, L, backbone.hidden_size)
    # the last hidden state is the one the LM head reads
    torch.testing.assert_close(
        backbone.language_model.get_output_embeddings()(out.hidden_states),
        out.logits,
        atol=1e-4,
        rtol=1e-4,
    )
    counts = {name: len(g) for name, g in out.tasks.items()}
    assert counts == {"temporal": 1, "box": 1, "track": 1, "mask": 2}
    for name, gathered in out.tasks.items():
        pid = int(backbone.task_tokens.placeholder_ids[backbone.task_tokens.task_names.index(name)])
        assert (input_ids[gathered.batch_index, gathered.position] == pid).all()
        torch.testing.assert_close(
            gathered.embeds, out.hidden_states[gathered.batch_index, gathered.position]
        )
    assert out.tasks["mask"].batch_index.tolist() == [2, 2]
    visual, grid = out.visual, out.visual_grid
    assert visual.shape[:2] == (B, frames_for(kind))
    assert visual.shape[2] == grid[0] * grid[1] and visual.shape[3] == backbone.visual_dim
    assert out.visual_mask.all()
    assert torch.isfinite(out.loss)


def test_task_embeddings_change_the_hidden_states_and_get_gradients(kind):
    backbone = build(kind)
    batch = make_batch(backbone, kind)
    out = backbone(batch)
    loss = sum(g.embeds.pow(2).sum() for g in out.tasks.values())
    loss.backward()
    for name in ("temporal", "box", "track", "mask"):
        grad = backbone.task_tokens.embeddings[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert backbone.task_tokens.box_encoder.mlp[0].weight.grad.abs().sum() > 0
    llm_layer = next(
        p for n, p in backbone.language_model.named_parameters() if "layers.0.self_attn.q_proj" in n
    )
    assert llm_layer.grad.abs().sum() > 0
    # the hidden state at a task token depends on the learnable embedding
    with torch.no_grad():
        before = out.tasks["temporal"].embeds.clone()
        backbone.task_tokens.embeddings["temporal"].add_(1.0)
        after = backbone(batch).tasks["temporal"].embeds
    assert not torch.allclose(before, after)


def test_save_and_load_reproduce_outputs_exactly(kind, tmp_path):
    backbone = build(kind).eval()
    with torch.no_grad():
        backbone.task_tokens.embeddings["box"].normal_()
    batch = make_batch(backbone, kind)
    backbone.save_pretrained(tmp_path / "bb")
    loaded = Backbone.from_pretrained(tmp_path / "bb").eval()
    assert type(loaded) is type(backbone)
    again = dict(
        loaded.processor(text=["USER: <video> a"], videos=[np.zeros((frames_for(kind), 32, 32, 3), np.uint8)])
    )
    reference = dict(
        backbone.processor(
            text=["USER: <video> a"], videos=[np.zeros((frames_for(kind), 32, 32, 3), np.uint8)]
        )
    )
    assert torch.equal(again["input_ids"], reference["input_ids"])
    with torch.no_grad():
        a, b = backbone(batch), loaded(batch)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.hidden_states, b.hidden_states)
    assert torch.equal(a.visual, b.visual)
    assert torch.equal(a.loss, b.loss)


def test_placeholder_count_must_match_visual_features(kind):
    backbone = build(kind)
    batch = make_batch(backbone, kind)
    if kind == "llava":  # videos go in as frames
        batch["pixel_values"] = batch["pixel_values"][:-1]
    else:
        batch["pixel_values_videos"] = batch["pixel_values_videos"][:2]
    if "video_frame_mask" in batch:
        batch["video_frame_mask"] = batch["video_frame_mask"][:2]
    with pytest.raises(ValueError, match="(placeholders|video tokens|videos)"):
        backbone(batch)


def test_track_box_count_and_range_are_checked():
    backbone = tiny_llava("llava")
    batch = make_batch(backbone, "llava")
    batch["prompt_boxes"] = None
    with pytest.raises(ValueError, match="1 input-box tokens"):
        backbone(batch)
    batch["prompt_boxes"] = torch.tensor([[0.5, 0.5, 1.2, 0.1]])
    with pytest.raises(ValueError, match=r"boxes\[0\].*\[0, 1\]"):
        backbone(batch)


def test_tokenizer_without_task_tokens_is_rejected():
    backbone = tiny_llava("llava", tasks=["temporal"])
    with pytest.raises(ValueError, match="lacks the task tokens.*<box_begin>"):
        TaskTokens(hidden_size=backbone.hidden_size, tasks=["box"]).bind(backbone.tokenizer)


def test_images_are_one_frame_each():
    backbone = tiny_llava("llava")
    image = np.full((32, 32, 3), 128, np.uint8)
    batch = dict(
        backbone.processor(text=["<image> where? <box_begin><boxes>", "<image> and?"], images=[image, image])
    )
    out = backbone(batch)
    assert out.visual.shape == (2, 1, 16, 64)
    assert len(out.tasks["box"]) == 1


def test_videochat_pads_clips_of_different_lengths():
    backbone = tiny_videochat("timm").eval()  # the Q-Former has dropout
    rng = np.random.default_rng(0)
    batch = dict(
        backbone.processor(
            text=["<video> a <temp>", "<image> b"],
            videos=[rng.integers(0, 255, (5, 40, 48, 3), dtype=np.uint8)],
            images=[rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)],
        )
    )
    assert batch["pixel_values_videos"].shape == (2, 5, 3, 32, 32)
    assert batch["video_frame_mask"].sum(1).tolist() == [5, 1]
    out = backbone(batch)
    assert out.visual.shape == (2, 5, 16, 32)
    assert out.visual_mask.sum(1).tolist() == [5, 1]
    # padding frames do not leak into the LLM: the one-frame sample equals itself batched alone
    single = dict(
        backbone.processor(text=["<image> b"], images=[rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)])
    )
    single["pixel_values_videos"] = batch["pixel_values_videos"][1:, :1]
    with torch.no_grad():
        alone = backbone(single).hidden_states[0]
        together = backbone(batch).hidden_states[1, : alone.shape[0]]
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llava", "videochat_timm"])
def test_lora_trains_adapters_token_rows_and_task_embeddings_only(kind):
    pytest.importorskip("peft")
    from tpo.backbones.lora import apply_lora

    backbone = build(kind).eval()  # the Q-Former has dropout
    batch = make_batch(backbone, kind)
    with torch.no_grad():
        before = backbone(batch)
    trainable = apply_lora(backbone, target_modules=["q_proj", "v_proj"], r=4, alpha=8, dropout=0.0)
    assert trainable and all(
        "lora_" in n or "trainable_tokens_delta" in n or n.startswith("task_tokens.") for n in trainable
    )
    assert any("vision" not in n and "lora_A" in n for n in trainable)
    assert not any(("vision" in n or "qformer" in n) and "lora" in n for n in trainable)
    out = backbone(batch)
    # LoRA starts as the identity (B = 0), token rows start at their old values
    torch.testing.assert_close(out.logits, before.logits, atol=1e-5, rtol=1e-5)
    (out.loss + sum(g.embeds.sum() for g in out.tasks.values())).backward()
    grads = {n: p.grad for n, p in backbone.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "trainable_tokens_delta" in n)
    assert backbone.task_tokens.embeddings["temporal"].grad.abs().sum() > 0
    frozen = [p for n, p in backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    with pytest.raises(ValueError, match="LoRA adapters"):
        backbone.save_pretrained("/nonexistent")


def test_lora_rejects_unknown_targets():
    pytest.importorskip("peft")
    from tpo.backbones.lora import apply_lora

    with pytest.raises(ValueError, match="no linear layer of the LLM matches"):
        apply_lora(tiny_llava("llava"), target_modules=["not_a_layer"])


def test_from_pretrained_reads_a_plain_hugging_face_folder(tmp_path):
    backbone = tiny_llava("llava_onevision", tasks=["temporal"])
    backbone.model.save_pretrained(tmp_path / "hf")
    backbone.processor.save_pretrained(tmp_path / "hf")
    loaded = LlavaBackbone.from_pretrained(tmp_path / "hf")
    assert loaded.model_type == "llava_onevision" and loaded.task_tokens is None
    loaded.attach_task_tokens(tasks=["temporal", "box"])
    assert len(loaded.tokenizer) == len(backbone.tokenizer) + 2  # only box's two tokens are new
    assert loaded.model.get_input_embeddings().weight.shape[0] == len(loaded.tokenizer)


def test_missing_folder_and_wrong_class_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tpo_backbone.json"):
        Backbone.from_pretrained(tmp_path)
    tiny_videochat("clip").save_pretrained(tmp_path / "vc")
    with pytest.raises(ValueError, match="holds a VideoChatBackbone, not a LlavaBackbone"):
        LlavaBackbone.from_pretrained(tmp_path / "vc")
    assert isinstance(VideoChatBackbone.from_pretrained(tmp_path / "vc"), VideoChatBackbone)


@pytest.mark.parametrize("kind", ["llava_onevision", "videochat_clip"])
def test_modality_adaptive_backbone_starts_equal_and_round_trips(kind, tmp_path):
    backbone = build(kind).eval()
    batch = make_batch(backbone, kind)
    with torch.no_grad():
        before = backbone(batch)
        handle = backbone.enable_modality_adaptive()
        after = backbone(batch)
        torch.testing.assert_close(after.logits, before.logits, atol=1e-5, rtol=1e-5)
        for p in handle.branch_parameters(1):
            p.add_(0.05 * torch.randn_like(p))
        changed = backbone(batch)
    # the visual tokens now take the visual branch: outputs after them change
    assert not torch.allclose(changed.logits, before.logits, atol=1e-4)
    backbone.save_pretrained(tmp_path / "bb")
    loaded = Backbone.from_pretrained(tmp_path / "bb").eval()
    assert loaded.modality_adaptive is not None
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, changed.logits)


def test_the_registry_picks_the_class_by_model_type_and_names_the_registered_ones(tmp_path):
    from tpo.backbones import backbone_class, register_backbone, registered_model_types
    from tpo.backbones.factory import create_backbone

    assert backbone_class("llava_onevision") is LlavaBackbone
    assert backbone_class("videochat") is VideoChatBackbone
    assert register_backbone("llava", LlavaBackbone) is LlavaBackbone  # again: a no-op
    with pytest.raises(ValueError, match="'llava' is already registered to LlavaBackbone"):
        register_backbone("llava", VideoChatBackbone)
    with pytest.raises(TypeError, match="Backbone subclass"):
        register_backbone("not_a_backbone", dict)
    backbone = tiny_llava("llava_onevision", tasks=["temporal"])
    backbone.model.save_pretrained(tmp_path / "hf")
    backbone.processor.save_pretrained(tmp_path / "hf")
    loaded = create_backbone({"pretrained": str(tmp_path / "hf"), "tasks": ["temporal"]})
    assert type(loaded) is LlavaBackbone and loaded.task_tokens.task_names == ["temporal"]
    config = tmp_path / "hf" / "config.json"
    config.write_text(config.read_text().replace('"llava_onevision"', '"internvl_chat"'))
    expected = r"'internvl_chat' has no registered backbone; registered: \[.*'llava'.*'qwen2_5_vl'"
    with pytest.raises(ValueError, match=expected):
        Backbone.from_pretrained(tmp_path / "hf")
    assert "videochat" in registered_model_types()


def test_one_predicate_names_the_peft_parameters():
    from tpo.backbones.lora import is_lora_parameter

    adapters = ["m.q_proj.lora_A.default.weight", "m.embed.token_adapter.trainable_tokens_delta.default",
                "m.lm_head.modules_to_save.default.weight", "m.q_proj.lora_magnitude_vector.default.weight"]
    base = ["m.q_proj.base_layer.weight", "m.embed_tokens.token_adapter.base_layer.weight",
            "m.lm_head.original_module.weight", "m.flora_proj.weight", "backbone.task_tokens.embeddings.box"]
    assert all(map(is_lora_parameter, adapters)) and not any(map(is_lora_parameter, base))


def test_local_window_limits_the_first_llm_layer_to_the_last_tokens(tmp_path):
    backbone = tiny_llava("llava_onevision", local_window=4)
    lm = backbone.model.model.language_model
    ids = torch.randint(10, 50, (1, 12))
    changed = ids.clone()
    changed[0, 0] = 60
    with torch.no_grad():
        first, second = (lm(input_ids=x, output_hidden_states=True).hidden_states for x in (ids, changed))
    moved = (first[1] - second[1]).abs().sum(-1)[0]  # after the first (local) layer
    assert (moved[:4] > 0).all() and (moved[4:] == 0).all()
    assert ((first[2] - second[2]).abs().sum(-1)[0, 4:] > 0).all()  # the second layer is global
    backbone.save_pretrained(tmp_path)
    assert type(backbone).from_pretrained(tmp_path).model.config.text_config.sliding_window == 4
    with pytest.raises(ValueError, match="local_window"):
        tiny_llava("llava", local_window=4)

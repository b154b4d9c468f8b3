"""InternVL backbone on a tiny model: plain folders, visual tokens after the pixel shuffle, task
tokens, LoRA, modality-adaptive layers, save/load, generation with task calls, a training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tpo.backbones import Backbone, InternVLBackbone, backbone_class
from tpo.backbones.factory import create_backbone
from tpo.backbones.tiny import tiny_llava
from tpo.backbones.tiny_internvl import (
    INTERNVL_CHAT_TEMPLATE,
    tiny_internvl,
    tiny_internvl_model_and_processor,
)
from tpo.datamodules import VideoReader
from tpo.datamodules.synthetic import write_h264

SMALL_HEADS = {
    "temporal": {"hidden_dim": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1,
                 "dim_feedforward": 64, "dropout": 0.0},
    "box": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "track": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "mask": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "mlp_dim": 64},
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> np.ndarray:
    """Four frames ``(4, 48, 64, 3)`` uint8 read back from an H.264 mp4 written with PyAV."""
    path = tmp_path_factory.mktemp("internvl") / "clip.mp4"
    rng = np.random.default_rng(0)
    write_h264(path, rng.integers(0, 255, (8, 48, 64, 3), dtype=np.uint8), fps=8.0)
    frames = VideoReader(path).sample(4).frames
    assert frames.shape == (4, 48, 64, 3)
    return frames


def wide_image() -> np.ndarray:
    """A 64x128 image: two tiles of a 1x2 canvas and a thumbnail."""
    return np.random.default_rng(1).integers(0, 255, (64, 128, 3), dtype=np.uint8)


def chat(user: str, answer: str | None = None) -> str:
    text = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return text if answer is None else f"{text}{answer}<|im_end|>"


def make_batch(backbone: InternVLBackbone, clip: np.ndarray) -> dict:
    """Three samples: a tiled image asking for a box, a video asking for a moment and a track (an
    input box), a text-only question with two mask calls."""
    p = backbone.processor
    texts = [
        chat(f"{p.image_token}\nWhere is it?", "<box_begin><boxes>"),
        chat(f"{p.video_token}\nWhen, and track <track_box>", "<time_begin><temp> <track_begin><tracking>"),
        chat("Segment it twice", "<seg_begin><seg><seg>"),
    ]
    batch = dict(p(text=texts, images=[wide_image()], videos=[clip]))
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    batch["prompt_boxes"] = torch.tensor([[0.5, 0.4, 0.2, 0.3]])
    return batch


@pytest.fixture(scope="module")
def backbone() -> InternVLBackbone:
    return tiny_internvl().eval()


def test_plain_folder_loads_by_model_type_and_through_create_backbone(tmp_path, clip):
    model, processor = tiny_internvl_model_and_processor(seed=3)
    model.save_pretrained(tmp_path / "hf")
    processor.save_pretrained(tmp_path / "hf")
    loaded = Backbone.from_pretrained(tmp_path / "hf").eval()
    assert type(loaded) is InternVLBackbone and loaded.task_tokens is None
    assert loaded.processor.chat_template == INTERNVL_CHAT_TEMPLATE
    batch = dict(loaded.processor(text=[chat(f"{loaded.processor.video_token}\nHi")], videos=[clip]))
    with torch.no_grad():
        reference = model.eval()(**batch).logits
        assert torch.equal(loaded(batch).logits, reference)
    backbone = create_backbone({"pretrained": str(tmp_path / "hf"), "tasks": ["temporal", "box"]})
    assert type(backbone) is InternVLBackbone and backbone.task_tokens.task_names == ["temporal", "box"]
    assert len(backbone.tokenizer) == len(processor.tokenizer) + 4
    assert backbone.model.get_input_embeddings().weight.shape[0] == len(backbone.tokenizer)
    assert backbone.chat_format().user == "<|im_start|>user\n"


@pytest.mark.parametrize(("image_size", "patch_size", "ratio"), [(64, 8, 0.5), (48, 8, 0.5), (32, 8, 0.5)])
def test_visual_tokens_are_the_pixel_shuffled_grid_of_each_frame(image_size, patch_size, ratio, clip):
    backbone = tiny_internvl(image_size=image_size, patch_size=patch_size, downsample_ratio=ratio).eval()
    side = int(image_size / patch_size * ratio)  # patches per side, halved by the 2x2 pixel shuffle
    batch = make_batch(backbone, clip)
    tiles = batch["pixel_values"]
    assert tiles.shape == (3 + 4, 3, image_size, image_size)  # 1x2 crops + thumbnail, 4 frames
    context = batch["input_ids"] == backbone.image_token_id
    assert context.sum(1).tolist() == [3 * side**2, 4 * side**2, 0]
    calls = []
    backbone.model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        out = backbone(batch)
        assert len(calls) == 1  # the LLM reads the backbone's features: the tiles are encoded once
        with backbone.prompt_boxes(batch["prompt_boxes"]):
            model_out = backbone.model(
                **{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
            )
        alone = backbone.model.model.get_image_features(pixel_values=tiles, return_dict=True).pooler_output
    torch.testing.assert_close(out.logits, model_out.logits)
    assert out.visual.shape == (3, 4, side * side, backbone.visual_dim) and out.visual_grid == (side, side)
    assert out.visual_mask.tolist() == [[True, False, False, False], [True] * 4, [False] * 4]
    assert out.temporal_stride == 1
    torch.testing.assert_close(out.visual[0, 0], alone[2])  # the image's thumbnail, last of its tiles
    torch.testing.assert_close(out.visual[1], alone[3:])
    assert out.frames.shape == (3, 4, 3, image_size, image_size)
    thumbnail = backbone.processor.processor.image_processor(
        images=[wide_image()], crop_to_patches=False, return_tensors="pt"
    )["pixel_values"][0]
    torch.testing.assert_close(out.frames[0, 0], thumbnail)
    assert torch.equal(out.frames[1], tiles[3:])
    assert out.visual[2].abs().sum() == 0 and out.frames[2].abs().sum() == 0


def test_task_embeddings_get_gradients_through_the_llm(clip):
    backbone = tiny_internvl()
    batch = make_batch(backbone, clip)
    out = backbone(batch)
    counts = {name: len(g) for name, g in out.tasks.items()}
    assert counts == {"temporal": 1, "box": 1, "track": 1, "mask": 2}
    assert out.tasks["mask"].batch_index.tolist() == [2, 2]
    torch.testing.assert_close(backbone.model.lm_head(out.hidden_states), out.logits)
    (sum(g.embeds.pow(2).sum() for g in out.tasks.values()) + out.visual.sum()).backward()
    for name in ("temporal", "box", "track", "mask"):
        assert backbone.task_tokens.embeddings[name].grad.abs().sum() > 0, name
    assert backbone.task_tokens.box_encoder.mlp[0].weight.grad.abs().sum() > 0
    language = backbone.model.model.language_model
    assert language.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    patches = backbone.model.model.vision_tower.embeddings.patch_embeddings.projection
    assert patches.weight.grad.abs().sum() > 0
    with torch.no_grad():
        before = out.tasks["temporal"].embeds.clone()
        backbone.task_tokens.embeddings["temporal"].add_(1.0)
        assert not torch.allclose(backbone(batch).tasks["temporal"].embeds, before)


@pytest.mark.parametrize("tied", [True, False])
def test_task_token_rows_start_at_the_mean_of_the_old_rows(tied):
    backbone = tiny_internvl(tie_word_embeddings=tied, with_task_tokens=False)
    old_in = backbone.model.get_input_embeddings().weight.detach().clone()
    old_out = backbone.model.lm_head.weight.detach().clone()
    backbone.attach_task_tokens(tasks=["temporal", "box"])
    new_in, new_out = backbone.model.get_input_embeddings().weight, backbone.model.lm_head.weight
    assert new_in.shape[0] == old_in.shape[0] + 4 == len(backbone.tokenizer)
    assert (new_out is new_in) is tied
    torch.testing.assert_close(new_in[-4:], old_in.mean(0).expand(4, -1))
    torch.testing.assert_close(new_out[-4:], old_out.mean(0).expand(4, -1))
    assert torch.equal(new_in[: old_in.shape[0]], old_in)


def test_lora_adapts_the_llm_only(clip):
    from tpo.backbones.lora import apply_lora, is_lora_parameter

    backbone = tiny_internvl().eval()
    batch = make_batch(backbone, clip)
    with torch.no_grad():
        before = backbone(batch).logits
    trainable = apply_lora(backbone, target_modules=["q_proj", "v_proj"], r=4, alpha=8, dropout=0.0)
    assert any("language_model" in n and "lora_A" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)  # InternViT has q_proj / v_proj too
    assert all(is_lora_parameter(n) or n.startswith("task_tokens.") for n in trainable)
    out = backbone(batch)
    torch.testing.assert_close(out.logits, before, atol=1e-5, rtol=1e-5)
    (out.loss + sum(g.embeds.sum() for g in out.tasks.values())).backward()
    grads = {n: p.grad for n, p in backbone.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "trainable_tokens_delta" in n)
    assert all(p.grad is None for p in backbone.parameters() if not p.requires_grad)


def test_save_and_load_reproduce_outputs_with_modality_adaptive_layers(tmp_path, clip):
    backbone = tiny_internvl().eval()
    batch = make_batch(backbone, clip)
    with torch.no_grad():
        backbone.task_tokens.embeddings["box"].normal_()
        before = backbone(batch).logits
        handle = backbone.enable_modality_adaptive()
        torch.testing.assert_close(backbone(batch).logits, before, atol=1e-5, rtol=1e-5)
        for p in handle.branch_parameters(1):
            p.add_(0.05 * torch.randn_like(p))
        a = backbone(batch)
    assert not torch.allclose(a.logits, before, atol=1e-4)  # <IMG_CONTEXT> tokens take branch 1
    backbone.save_pretrained(tmp_path / "bb")
    loaded = Backbone.from_pretrained(tmp_path / "bb").eval()
    assert type(loaded) is InternVLBackbone and loaded.modality_adaptive is not None
    again = make_batch(loaded, clip)
    assert torch.equal(again["input_ids"], batch["input_ids"])
    with torch.no_grad():
        b = loaded(batch)
    for field in ("logits", "hidden_states", "visual", "frames", "loss"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("llm", ["qwen3", "llama"])
def test_other_llm_families_forward_and_take_modality_adaptive_layers(llm, clip):
    backbone = tiny_internvl(llm=llm, tasks=["box"]).eval()
    p = backbone.processor
    batch = dict(p(text=[chat(f"{p.video_token}\nWhere?", "<box_begin><boxes>")], videos=[clip]))
    with torch.no_grad():
        before = backbone(batch)
        backbone.enable_modality_adaptive()
        torch.testing.assert_close(backbone(batch).logits, before.logits, atol=1e-5, rtol=1e-5)
    assert before.visual.shape == (1, 4, 16, 64) and len(before.tasks["box"]) == 1


def test_generation_calls_a_task_with_the_teacher_forced_embedding(backbone, clip):
    from tpo.generation import generate_with_tasks

    p, tokenizer = backbone.processor, backbone.tokenizer
    prompts = [chat(f"{p.image_token}\nWhen?"), chat(f"{p.video_token}\nWhen does it move?")]
    media = [{"images": [wide_image()]}, {"videos": [clip]}]
    tokenizer.padding_side = "left"
    try:
        batch = dict(p(text=prompts, images=[wide_image()], videos=[clip]))
    finally:
        tokenizer.padding_side = "right"
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][:, 0].all()
    batch["prompt_boxes"] = None
    begin = int(backbone.task_tokens.begin_ids[0])  # <time_begin>
    generation = generate_with_tasks(backbone, batch, max_new_tokens=3, sequence_bias={(begin,): 100.0})
    assert generation.calls.tolist() == [True, True] and generation.tokens[:, 0].tolist() == [begin, begin]
    assert generation.out.visual.shape == (2, 4, 16, 64)
    for b, (prompt, kwargs) in enumerate(zip(prompts, media, strict=True)):
        forced = dict(p(text=[prompt + "<time_begin><temp>"], **kwargs))
        with torch.no_grad():
            truth = backbone(forced).tasks["temporal"].embeds[0]
        torch.testing.assert_close(generation.out.tasks["temporal"].embeds[b], truth, atol=1e-5, rtol=1e-4)


def test_a_training_step_runs_on_the_multitask_data_module(tmp_path):
    from tpo.datamodules import MultiTaskDataModule, make_synthetic_dataset
    from tpo.module import TPOModule

    make_synthetic_dataset(tmp_path, n_videos=8, size=32, num_frames=8, seed=3)
    module = TPOModule(backbone={"name": "tiny_internvl"}, heads=SMALL_HEADS, stage="stage3")
    data = MultiTaskDataModule.from_synthetic(tmp_path, backbone=module.backbone, batch_size=8, num_frames=4)
    data.setup("fit")
    tasks = {"temporal", "box", "track", "mask"}
    batch = next(b for b in data.train_dataloader() if tasks <= set(b["targets"]))
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    for task in tasks:
        assert module.backbone.task_tokens.embeddings[task].grad.abs().sum() > 0, task


def test_bad_models_folders_and_batches_are_named(tmp_path, clip):
    with pytest.raises(ValueError, match="model_type 'llava' is not supported by InternVLBackbone"):
        InternVLBackbone(tiny_llava("llava").model, tiny_internvl_model_and_processor()[1])
    assert backbone_class("internvl") is InternVLBackbone
    model, _ = tiny_internvl_model_and_processor()
    model.save_pretrained(tmp_path / "no_processor")
    with pytest.raises(FileNotFoundError, match=r"no_processor: no processor; missing the processor"
                       r".*preprocessor_config\.json.*tokenizer \(tokenizer\.json or "
                       r"tokenizer_config\.json or vocab\.json\)"):
        Backbone.from_pretrained(tmp_path / "no_processor")
    config = tmp_path / "no_processor" / "config.json"
    config.write_text(config.read_text().replace('"model_type": "internvl"', '"model_type": "internvl_chat"'))
    with pytest.raises(ValueError, match=r"'internvl_chat' has no registered backbone; "
                       r"registered: .*'internvl'"):
        Backbone.from_pretrained(tmp_path / "no_processor")
    backbone = tiny_internvl(tasks=["box"])
    batch = make_batch(backbone, clip)
    batch["pixel_values"] = batch["pixel_values"][:-1]
    with pytest.raises(ValueError, match=r"7 tiles of <IMG_CONTEXT> placeholders \(\[3, 4, 0\] per sample\) "
                       "but pixel_values holds 6 tiles"):
        backbone(batch)
    batch = make_batch(backbone, clip)
    batch["input_ids"][1, batch["input_ids"][1].tolist().index(backbone.image_token_id)] = 0
    with pytest.raises(ValueError, match="sample 1 has a run of 15 <IMG_CONTEXT> tokens, not a multiple "
                       "of the 16 tokens of one tile"):
        backbone(batch)

"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL backbones on tiny models: plain Hugging Face folders, visual
tokens on the merged grid with the 2-frame temporal patch, task tokens, LoRA, save/load,
generation with M-RoPE positions, modality-adaptive layers, errors and a TPOModule step."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tpo.backbones import Backbone, QwenVLBackbone
from tpo.backbones.factory import create_backbone
from tpo.backbones.tiny_qwen_vl import TINY_QWEN_VL_KINDS, tiny_qwen_vl, tiny_qwen_vl_model_and_processor
from tpo.datamodules import VideoReader, make_synthetic_dataset
from tpo.datamodules.synthetic import write_h264

SIZE, PATCH, MERGE, TEMPORAL = 48, 8, 2, 2  # the tiny builders' patching; 48 px keeps its size
LENGTHS = (5, 8)  # an odd clip: its last temporal patch is padded with its last frame
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(params=TINY_QWEN_VL_KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list:
    """Two H.264 clips (a square moving over a gradient) read back with VideoReader."""
    root = tmp_path_factory.mktemp("videos")
    ys, xs = np.mgrid[:SIZE, :SIZE]
    out = []
    for n in LENGTHS:
        frames = np.zeros((n, SIZE, SIZE, 3), np.uint8)
        frames[..., 0], frames[..., 1] = (xs * 5).astype(np.uint8), (ys * 5).astype(np.uint8)
        for t in range(n):
            frames[t, 10:22, 4 + 4 * t : 16 + 4 * t, 2] = 255
        path = root / f"clip{n}.mp4"
        write_h264(path, frames, fps=4.0)
        out.append(VideoReader(path, backend="pyav").sample(n))  # decord misreads 48-px-wide clips
    return out


def video_batch(backbone: QwenVLBackbone, clips: list, *, labels: bool = True) -> dict:
    """Two video questions answered with task tokens (three task kinds, an input box)."""
    v = backbone.processor.video_token
    texts = [
        f"<|im_start|>user\n{v}When does the square move?{ASSISTANT}<time_begin><temp><|im_end|>",
        f"<|im_start|>user\n{v}Track <track_box> and segment it.{ASSISTANT}"
        "<track_begin><tracking> <box_begin><boxes> <seg_begin><seg><|im_end|>",
    ]
    batch = dict(backbone.processor(text=texts, videos=[c.frames for c in clips]))
    if labels:
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    batch["prompt_boxes"] = torch.tensor([[0.5, 0.4, 0.2, 0.3]])
    return batch


def normalised(frames: np.ndarray, processor) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 -> ``(T, 3, H, W)`` as an image / video ``processor`` normalises (no resize)."""
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    return (torch.from_numpy(frames).permute(0, 3, 1, 2) / 255.0 - mean) / std


# ---------------------------------------------------------------------- folders
def test_a_plain_hugging_face_folder_loads_through_the_registry_and_the_factory(kind, clips, tmp_path):
    tied = kind == "qwen3_vl"  # Qwen3-VL-2B ties its LM head to the embeddings
    model, processor = tiny_qwen_vl_model_and_processor(kind, tie_word_embeddings=tied)
    model.save_pretrained(tmp_path / "hf")
    processor.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == kind

    plain = Backbone.from_pretrained(tmp_path / "hf").eval()
    assert type(plain) is QwenVLBackbone and plain.model_type == kind and plain.task_tokens is None
    assert plain.processor.chat_template == processor.chat_template
    batch = video_batch(plain, clips, labels=False)
    del batch["prompt_boxes"]
    with torch.no_grad():
        reference = model.eval()(**{k: v for k, v in batch.items() if k != "video_num_frames"})
        torch.testing.assert_close(plain(batch).logits, reference.logits)  # same model, features once

    old_input = model.get_input_embeddings().weight.detach()
    old_output = model.get_output_embeddings().weight.detach()
    backbone = create_backbone({"pretrained": str(tmp_path / "hf"), "tasks": ["temporal", "box"]})
    assert backbone.task_tokens.task_names == ["temporal", "box"]
    assert len(backbone.tokenizer) == len(processor.tokenizer) + 4
    embeddings = backbone.model.get_input_embeddings().weight
    output = backbone.model.get_output_embeddings().weight
    assert embeddings.shape[0] == output.shape[0] == len(backbone.tokenizer)
    assert (output is embeddings) == tied
    new = backbone.task_tokens.trainable_token_rows()
    for weight, old in ((embeddings, old_input), (output, old_output)):
        torch.testing.assert_close(weight[new], old.mean(0, keepdim=True).expand(len(new), -1))


def test_a_folder_without_processor_files_is_named(tmp_path):
    model, _ = tiny_qwen_vl_model_and_processor("qwen2_vl")
    model.save_pretrained(tmp_path / "hf")
    expected = r"hf: no processor; missing the processor / image processor config \(processor_config.json"
    with pytest.raises(FileNotFoundError, match=expected):
        Backbone.from_pretrained(tmp_path / "hf")


def test_an_unsupported_model_type_is_named(tmp_path):
    model, processor = tiny_qwen_vl_model_and_processor("qwen2_5_vl")
    model.save_pretrained(tmp_path / "hf")
    processor.save_pretrained(tmp_path / "hf")
    config = tmp_path / "hf" / "config.json"
    config.write_text(config.read_text().replace('"qwen2_5_vl"', '"qwen2_5_omni"'))
    with pytest.raises(ValueError, match=r"'qwen2_5_omni' has no registered backbone; .*'qwen3_vl'"):
        Backbone.from_pretrained(tmp_path / "hf")
    llava_like = tiny_qwen_vl_model_and_processor("qwen2_vl")[0]
    llava_like.config.model_type = "llava"
    with pytest.raises(ValueError, match="model_type 'llava' is not supported by QwenVLBackbone; expected"):
        QwenVLBackbone(llava_like, processor)


def test_the_processor_carries_the_family_chat_template(kind):
    backbone = tiny_qwen_vl(kind)
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When?"}]}]
    rendered = backbone.processor.apply_chat_template(conversation, tokenize=False,
                                                      add_generation_prompt=True)
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if kind != "qwen3_vl" else ""
    assert rendered == (f"{system}<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>When?"
                        "<|im_end|>\n<|im_start|>assistant\n")
    assert rendered.count(backbone.processor.video_token) == 1
    chat = backbone.chat_format()
    assert chat.assistant.endswith("<|im_start|>assistant\n") and chat.answer_end == "<|im_end|>"
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    ids = backbone.tokenizer.convert_tokens_to_ids(specials)
    assert [len(backbone.tokenizer(t, add_special_tokens=False).input_ids) for t in specials] == [1] * 5
    config = backbone.model.config
    assert (config.vision_start_token_id, config.vision_end_token_id, config.video_token_id) == tuple(ids[2:])
    assert sorted(backbone.media_token_ids()) == sorted([*ids[2:], config.image_token_id])


# ---------------------------------------------------------------------- visual tokens
def test_video_tokens_follow_the_merged_grid_and_the_temporal_patch(kind, clips):
    backbone = tiny_qwen_vl(kind)
    batch = video_batch(backbone, clips)
    counting = []
    backbone.model.model.visual.register_forward_hook(lambda *_: counting.append(1))
    out = backbone(batch)
    assert len(counting) == 1  # the vision tower runs once: the LLM reads the precomputed features

    side = SIZE // PATCH // MERGE  # independent of the processor: 48 px, 8 px patches, 2 x 2 merge
    steps = [math.ceil(n / TEMPORAL) for n in LENGTHS]
    assert batch["video_grid_thw"].tolist() == [[t, SIZE // PATCH, SIZE // PATCH] for t in steps]
    placeholders = (batch["input_ids"] == backbone.video_token_id).sum(1).tolist()
    assert placeholders == [t * side * side for t in steps]
    assert out.visual.shape == (2, max(steps), side * side, backbone.visual_dim)
    assert out.visual_grid == (side, side) and out.temporal_stride == TEMPORAL
    assert out.visual_mask.sum(1).tolist() == steps and out.num_frames.tolist() == list(LENGTHS)
    assert not out.visual[0, steps[0]:].any()  # padding steps

    per_frame, mask = out.per_frame()
    assert per_frame.shape[:2] == (2, max(LENGTHS)) and mask.sum(1).tolist() == list(LENGTHS)
    torch.testing.assert_close(per_frame[0, 4], out.visual[0, 2])  # frame 4: the padded patch
    assert out.frames.shape == (2, max(LENGTHS), 3, SIZE, SIZE)
    video_processor = backbone.processor.processor.video_processor
    for b, clip in enumerate(clips):  # the frames recovered from the patches are the frames read
        n = len(clip.frames)
        expected = normalised(clip.frames, video_processor)
        torch.testing.assert_close(out.frames[b, :n], expected, atol=1e-5, rtol=1e-5)
        assert not out.frames[b, n:].any()


def test_images_are_one_step_and_share_a_batch_with_videos(kind, clips):
    backbone = tiny_qwen_vl(kind)
    i, v = backbone.processor.image_token, backbone.processor.video_token
    image = clips[1].frames[3]
    side = SIZE // PATCH // MERGE
    alone = backbone(dict(backbone.processor(text=[f"{i} where? <box_begin><boxes>", f"{i} and?"],
                                             images=[image, image])))
    assert alone.visual.shape == (2, 1, side * side, backbone.visual_dim) and alone.temporal_stride == 1
    assert alone.num_frames.tolist() == [1, 1] and alone.per_frame()[0].shape[1] == 1
    expected = normalised(image[None], backbone.processor.processor.image_processor).expand(2, -1, -1, -1)
    torch.testing.assert_close(alone.frames[:, 0], expected, atol=1e-5, rtol=1e-5)

    mixed = backbone(dict(backbone.processor(text=[f"{i} where?", f"{v} when?"], images=[image],
                                             videos=[clips[1].frames])))
    assert mixed.temporal_stride == TEMPORAL and mixed.visual_mask.sum(1).tolist() == [1, 4]
    assert mixed.num_frames.tolist() == [1, 8]
    torch.testing.assert_close(mixed.visual[0, 0], alone.visual[0, 0])  # the same image tokens
    assert mixed.per_frame()[1].sum(1).tolist() == [1, 8]


def test_placeholder_counts_must_match_the_media(clips):
    backbone = tiny_qwen_vl("qwen2_5_vl")
    batch = video_batch(backbone, clips)
    with pytest.raises(ValueError, match=r"video_num_frames: \[7, 8\] frames for videos of \[6, 8\] frames"):
        backbone({**batch, "video_num_frames": torch.tensor([7, 8])})
    first = batch["video_grid_thw"][0].prod()
    batch["pixel_values_videos"] = batch["pixel_values_videos"][first:]
    batch["video_grid_thw"] = batch["video_grid_thw"][1:]
    batch["video_num_frames"] = batch["video_num_frames"][1:]
    with pytest.raises(ValueError, match=r"\[27, 36\] video placeholder tokens per sample do not match the 1 "
                                         r"videos of the batch \(\[36\] merged tokens each\)"):
        backbone(batch)


# ---------------------------------------------------------------------- task tokens, LoRA, save/load
def test_task_embeddings_get_gradients_through_the_llm_and_the_vision_tower(kind, clips):
    backbone = tiny_qwen_vl(kind)
    batch = video_batch(backbone, clips)
    out = backbone(batch)
    assert {name: len(g) for name, g in out.tasks.items()} == {"temporal": 1, "box": 1, "track": 1, "mask": 1}
    for name, gathered in out.tasks.items():
        pid = backbone.task_tokens.placeholder_ids[backbone.task_tokens.task_names.index(name)]
        assert (batch["input_ids"][gathered.batch_index, gathered.position] == pid).all()
    (sum(g.embeds.pow(2).sum() for g in out.tasks.values()) + out.visual.sum()).backward()
    for name in ("temporal", "box", "track", "mask"):
        assert backbone.task_tokens.embeddings[name].grad.abs().sum() > 0, name
    assert backbone.task_tokens.box_encoder.mlp[0].weight.grad.abs().sum() > 0
    language = backbone.model.model.language_model
    assert language.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert backbone.model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        before = out.tasks["temporal"].embeds.clone()
        backbone.task_tokens.embeddings["temporal"].add_(1.0)
        assert not torch.allclose(backbone(batch).tasks["temporal"].embeds, before)


def test_lora_trains_adapters_token_rows_and_task_embeddings_only(kind, clips):
    pytest.importorskip("peft")
    from tpo.backbones.lora import apply_lora

    backbone = tiny_qwen_vl(kind, tie_word_embeddings=kind == "qwen3_vl")
    batch = video_batch(backbone, clips)
    with torch.no_grad():
        before = backbone(batch)
    trainable = apply_lora(backbone, target_modules=["q_proj", "v_proj"], r=4, alpha=8, dropout=0.0)
    assert trainable and all(
        "lora_" in n or "trainable_tokens_delta" in n or n.startswith("task_tokens.") for n in trainable
    )
    assert any("language_model" in n and "lora_A" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    out = backbone(batch)
    torch.testing.assert_close(out.logits, before.logits, atol=1e-5, rtol=1e-5)
    (out.loss + sum(g.embeds.sum() for g in out.tasks.values())).backward()
    grads = {n: p.grad for n, p in backbone.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "trainable_tokens_delta" in n)
    assert backbone.task_tokens.embeddings["temporal"].grad.abs().sum() > 0
    frozen = [p for _, p in backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)


def test_save_and_load_reproduce_outputs_exactly(kind, clips, tmp_path):
    backbone = tiny_qwen_vl(kind).eval()
    with torch.no_grad():
        backbone.task_tokens.embeddings["box"].normal_()
    batch = video_batch(backbone, clips)
    backbone.save_pretrained(tmp_path / "bb")
    loaded = Backbone.from_pretrained(tmp_path / "bb").eval()
    assert type(loaded) is QwenVLBackbone and loaded.model_type == kind
    text = [f"{backbone.processor.video_token} a"]
    again = loaded.processor(text=text, videos=[clips[0].frames])
    reference = backbone.processor(text=text, videos=[clips[0].frames])
    assert torch.equal(again["input_ids"], reference["input_ids"])
    with torch.no_grad():
        a, b = backbone(batch), loaded(batch)
    for name in ("logits", "hidden_states", "visual", "frames", "loss"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.tasks["box"].embeds, b.tasks["box"].embeds)


def test_modality_adaptive_layers_start_equal_and_round_trip(kind, clips, tmp_path):
    backbone = tiny_qwen_vl(kind).eval()
    batch = video_batch(backbone, clips)
    with torch.no_grad():
        before = backbone(batch)
        handle = backbone.enable_modality_adaptive()
        assert len(handle.norms) == 2 * len(backbone.model.model.language_model.layers)  # the LLM's only
        torch.testing.assert_close(backbone(batch).logits, before.logits, atol=1e-5, rtol=1e-5)
        for p in handle.branch_parameters(1):
            p.add_(0.05 * torch.randn_like(p))
        changed = backbone(batch)
    assert not torch.allclose(changed.logits, before.logits, atol=1e-4)
    backbone.save_pretrained(tmp_path / "bb")
    loaded = Backbone.from_pretrained(tmp_path / "bb").eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, changed.logits)


# ---------------------------------------------------------------------- generation
def prompt_batch(backbone: QwenVLBackbone, clips: list) -> dict:
    """Two left-padded generation prompts of different lengths, ending with the assistant prefix."""
    v = backbone.processor.video_token
    texts = [f"<|im_start|>user\n{v}When?{ASSISTANT}",
             f"<|im_start|>user\n{v}Track <track_box> it.{ASSISTANT}"]
    tokenizer = backbone.tokenizer
    tokenizer.padding_side = "left"
    try:
        batch = dict(backbone.processor(text=texts, videos=[c.frames for c in clips]))
    finally:
        tokenizer.padding_side = "right"
    batch["prompt_boxes"] = torch.tensor([[0.5, 0.4, 0.2, 0.3]])
    return batch


def prefill(backbone: QwenVLBackbone, batch: dict) -> tuple[torch.Tensor, object]:
    """The prompt's M-RoPE positions ``(3, B, L)`` and the cache of all its tokens but the last."""
    positions = backbone.position_ids(batch)
    prefix = {"input_ids": batch["input_ids"][:, :-1], "attention_mask": batch["attention_mask"][:, :-1],
              "prompt_boxes": batch["prompt_boxes"]}
    out = backbone.lm_forward(prefix, mm_encoder_outputs=backbone.encode_visual(batch).mm_encoder_outputs,
                              position_ids=positions[..., :-1], use_cache=True)
    return positions, out.cache


def appended(batch: dict, tokens: torch.Tensor) -> dict:
    """``batch`` with ``tokens (B, n)`` after every prompt (for a teacher-forced forward)."""
    mask = batch["attention_mask"]
    return {**batch, "input_ids": torch.cat([batch["input_ids"], tokens], 1),
            "attention_mask": torch.cat([mask, torch.ones_like(tokens)], 1)}


@torch.no_grad()
def test_cached_generation_with_mrope_positions_equals_full_recomputation(kind, clips):
    backbone = tiny_qwen_vl(kind).eval()
    batch = prompt_batch(backbone, clips)
    assert (batch["attention_mask"][0] == 0).any()  # left padding
    positions, cache = prefill(backbone, batch)
    steps = 4
    generated = backbone.model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], cache=cache,
        position_ids=positions, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
        output_logits=True, return_dict_in_generate=True, pad_token_id=backbone.tokenizer.pad_token_id,
    )
    new = generated.sequences[:, batch["input_ids"].shape[1]:]
    for i in range(steps):  # every step equals a forward over the prompt and the tokens so far
        logits = backbone(appended(batch, new[:, :i])).logits[:, -1]
        torch.testing.assert_close(generated.logits[i], logits, atol=1e-4, rtol=1e-4)
        assert torch.equal(logits.argmax(-1), new[:, i])


@torch.no_grad()
def test_a_generated_task_call_gives_the_teacher_forced_task_embedding(kind, clips):
    backbone = tiny_qwen_vl(kind).eval()
    tokens = backbone.task_tokens
    begin, placeholder = (int(ids[tokens.task_names.index("temporal")])
                          for ids in (tokens.begin_ids, tokens.placeholder_ids))
    batch = prompt_batch(backbone, clips)
    positions, cache = prefill(backbone, batch)
    generated = backbone.model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], cache=cache,
        position_ids=positions, max_new_tokens=4, do_sample=False, sequence_bias={(begin,): 1e4},
        return_dict_in_generate=True,
        eos_token_id=[backbone.tokenizer.eos_token_id, *tokens.begin_ids.tolist()],
        pad_token_id=backbone.tokenizer.pad_token_id, suppress_tokens=tokens.placeholder_ids.tolist(),
    )
    new = generated.sequences[:, batch["input_ids"].shape[1]:]
    assert new.tolist() == [[begin], [begin]]
    # the task step: the begin token (not yet in the cache) and the placeholder, on M-RoPE positions
    # that continue the prompt's last one on all three axes
    step = torch.tensor([[begin, placeholder]] * 2)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(step)], 1)
    continued = positions[..., -1:] + torch.tensor([1, 2])
    out = backbone.model(input_ids=step, attention_mask=mask, position_ids=continued, cache=generated.cache,
                         use_cache=True, output_hidden_states=True, return_dict=True)
    teacher = backbone(appended(batch, step)).tasks["temporal"]
    torch.testing.assert_close(out.hidden_states[-1][:, 1], teacher.embeds, atol=1e-5, rtol=1e-4)
    assert teacher.batch_index.tolist() == [0, 1]


def test_text_positions_are_refused_for_a_batch_with_visual_tokens(clips):
    backbone = tiny_qwen_vl("qwen2_vl")
    batch = video_batch(backbone, clips)
    with pytest.raises(ValueError, match=r"needs M-RoPE positions \(3, B, L\).*got text positions"):
        backbone.lm_forward(batch, position_ids=batch["attention_mask"].cumsum(-1))


def test_video_metadata_sets_qwen3_vl_timestamps(clips):
    backbone = tiny_qwen_vl("qwen3_vl")
    clip = clips[1]
    metadata = [{"fps": 4.0, "frames_indices": clip.indices.tolist(), "total_num_frames": len(clip.frames)}]
    batch = backbone.processor(text=[backbone.processor.video_token], videos=[clip.frames],
                               video_metadata=metadata)
    text = backbone.tokenizer.decode(batch["input_ids"][0])
    stamps = [f"<{(clip.indices[t] + clip.indices[t + 1]) / 2 / 4.0:.1f} seconds>" for t in range(0, 8, 2)]
    assert [text.count(f"{s}<|vision_start|>") for s in stamps] == [1] * 4
    assert text.count("<|vision_start|>") == 4  # one per temporal patch, not nested


# ---------------------------------------------------------------------- the module
@pytest.mark.slow
def test_a_tpo_module_trains_a_step_on_multitask_batches(tmp_path):
    from tpo import TPOModule
    from tpo.datamodules import MultiTaskDataModule

    make_synthetic_dataset(tmp_path, n_videos=8, size=32, num_frames=8, seed=3)
    heads = {"temporal": {"hidden_dim": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1,
                          "dim_feedforward": 64, "dropout": 0.0},
             "box": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
             "track": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
             "mask": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "mlp_dim": 64}}
    module = TPOModule(backbone={"name": "tiny_qwen_vl", "kind": "qwen2_5_vl"}, heads=heads, stage="stage3")
    dm = MultiTaskDataModule.from_synthetic(tmp_path, backbone=module.backbone, batch_size=8, num_frames=7,
                                            seed=0, tasks=("temporal", "box", "track", "mask"))
    dm.setup("fit")
    batch = next(b for b in dm.train_dataloader() if {"temporal", "track", "mask"} <= set(b["targets"]))
    out = module.backbone(batch)
    assert out.temporal_stride == TEMPORAL and out.per_frame()[0].shape[1] == 7
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    for task in ("temporal", "track", "mask"):
        assert module.backbone.task_tokens.embeddings[task].grad.abs().sum() > 0, task

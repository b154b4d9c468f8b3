"""Predictor: generation with task calls equals teacher forcing; save/load; batching; errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tpo.datamodules import MultiTaskDataModule, make_synthetic_dataset
from tpo.datamodules.collate import TaskCollator
from tpo.module import TPOModule
from tpo.predict import Answer, Predictor, evaluate_predictor
from tpo.tasks import get_task_spec

TASKS = ("temporal", "box", "track", "mask")
NUM_FRAMES = 4
BACKBONE = {
    "name": "tiny_llava",
    "kind": "llava_onevision",
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 64,
    "num_layers": 2,
    "vision_hidden_size": 32,
    "vision_layers": 1,
}
HEADS = {
    "temporal": {"hidden_dim": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1,
                 "dim_feedforward": 64, "dropout": 0.0},
    "box": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "track": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "mask": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "mlp_dim": 64, "high_res_dims": [3, 3]},
}
LORA = {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "r": 8, "alpha": 16, "dropout": 0.0}


def _px_xyxy(cxcywh: np.ndarray, frame_size) -> list[float]:
    height, width = frame_size
    cx, cy, w, h = np.asarray(cxcywh, dtype=np.float64).reshape(4)
    return [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_data")
    make_synthetic_dataset(root, n_videos=10, size=32, num_frames=8, seed=4)
    return root


ITEM_TASKS = ("temporal", "temporal", "box", "box", "track", "track", "mask", "mask", None, None)


@pytest.fixture(scope="module")
def trained(synthetic):
    """A tiny model whose LLM is trained (language loss) on ten validation questions, two per task
    and two conversation questions, until greedy generation calls the right task on each (text on
    the conversations); the heads keep their random initialisation (equality needs no accuracy).

    Returns the module, the predictor and the ten dataset items."""
    torch.manual_seed(0)
    module = TPOModule(backbone=dict(BACKBONE), heads=HEADS, stage="full")
    data = MultiTaskDataModule.from_synthetic(synthetic, backbone=module.backbone, num_frames=NUM_FRAMES)
    names = data.val_set.names
    items = [data.val_set.datasets[names.index(t)][i] for t in (*TASKS, "conversation") for i in (0, 1)]
    batch = TaskCollator.from_backbone(module.backbone)(items)
    module.requires_grad_(False)
    model = module.backbone.model
    params = [*model.model.language_model.parameters(), *model.lm_head.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    predictor = Predictor(module, num_frames=NUM_FRAMES, fps=8.0, max_new_tokens=6)
    for step in range(300):
        module.train()
        loss = module.backbone(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 4 and [a.task for a in predictor.predict_items(items)] == list(ITEM_TASKS):
            break
    else:
        pytest.fail("the tiny model did not learn to call the tasks")
    module.requires_grad_(False).eval()
    return module, predictor, items


def _inputs(item: dict) -> tuple:
    """``(media, question, box)`` of a dataset item, as a user passes them."""
    media = item["video"] if item.get("video") is not None else item["image"]
    box = None
    if item.get("prompt_boxes") is not None:
        box = _px_xyxy(item["prompt_boxes"][0], item["meta"]["frame_size"])
    return media, item["turns"][0][0], box


def _teacher_forced(module: TPOModule, predictor: Predictor, item: dict, task: str) -> dict:
    """``predict_step`` on the collator's training batch of the same input with the answer
    ``<begin><placeholder>``."""
    media, question, box = _inputs(item)
    spec = get_task_spec(task)
    forced = predictor.make_item(media, question, box)
    forced["turns"] = [(question, spec.begin_token + spec.placeholder_token)]
    batch = TaskCollator.from_backbone(module.backbone)([forced])
    with torch.no_grad():
        (result,) = module.predict_step(batch, 0)
    assert result["task"] == task
    return result["prediction"]


def _assert_same(a: Answer, b: Answer, **tol) -> None:
    assert (a.task, a.text) == (b.task, b.text)
    for field in ("spans", "scores", "boxes", "track"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            torch.testing.assert_close(x, y, **tol)
    if a.masks is not None:
        assert torch.equal(a.masks, b.masks)


@pytest.mark.slow
def test_generated_task_calls_equal_teacher_forced_predict_step(trained):
    module, predictor, items = trained
    for item, task in zip(items, ITEM_TASKS, strict=True):
        if task is None:
            continue
        answer = predictor.predict(*_inputs(item)[:2], box=_inputs(item)[2])
        assert answer.task == task
        spec = get_task_spec(task)
        assert answer.text == spec.begin_token + spec.placeholder_token
        truth = _teacher_forced(module, predictor, item, task)
        tol = {"rtol": 1e-5, "atol": 1e-5}
        if task == "temporal":
            torch.testing.assert_close(answer.spans, truth.windows[:, :2], **tol)
            torch.testing.assert_close(answer.scores, truth.windows[:, 2], **tol)
            assert answer.spans.shape[1] == 2 and (answer.spans[:, 1] >= answer.spans[:, 0]).all()
        elif task == "box":
            torch.testing.assert_close(answer.boxes, truth.box_xyxy.reshape(1, 4), **tol)
        elif task == "track":
            torch.testing.assert_close(answer.track, truth.boxes_xywh, **tol)
            assert answer.track.shape == (NUM_FRAMES, 4)
        else:
            assert answer.masks.dtype == torch.bool and answer.masks.shape == (NUM_FRAMES, 32, 32)
            assert torch.equal(answer.masks, truth.masks)


def _greedy_reference(module: TPOModule, predictor: Predictor, item: dict, steps: int) -> list[int]:
    """Greedy decoding by full recomputation: one complete backbone forward per new token."""
    batch = predictor.collator([predictor.make_item(*_inputs(item)[:2], _inputs(item)[2])])
    tokens = module.backbone.task_tokens
    stops = {module.backbone.tokenizer.eos_token_id, *tokens.begin_ids.tolist()}
    never = [module.backbone.image_token_id, module.backbone.video_token_id,
             *tokens.placeholder_ids.tolist(), *tokens.input_ids_of_boxes.tolist()]
    new: list[int] = []
    for _ in range(steps):
        ids = torch.cat([batch["input_ids"], torch.tensor([new], dtype=torch.long)], 1)
        step = {**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": None}
        with torch.no_grad():
            logits = module.backbone(step).logits[0, -1]
        logits[never] = -torch.inf
        new.append(int(logits.argmax()))
        if new[-1] in stops:
            break
    return new


@pytest.mark.slow
def test_generation_equals_greedy_recomputation_and_text_answers_have_no_task(trained):
    module, predictor, items = trained
    tokenizer = module.backbone.tokenizer
    for item, task in zip(items, ITEM_TASKS, strict=True):
        if task not in (None, "track"):
            continue
        answer = predictor.predict(*_inputs(item)[:2], box=_inputs(item)[2])
        reference = _greedy_reference(module, predictor, item, predictor.max_new_tokens)
        ids = [i for i in reference if i != tokenizer.eos_token_id]
        if task is None:
            assert answer.task is None and answer.prediction is None
            assert answer.spans is None and answer.boxes is None and answer.masks is None
            assert answer.text == tokenizer.decode(ids).strip() and answer.text
        else:
            assert ids[-1] == int(module.backbone.task_tokens.begin_ids[2])
            assert answer.text == tokenizer.decode(ids).strip() + "<tracking>"


@pytest.mark.slow
def test_batched_predictions_equal_one_by_one(trained):
    module, predictor, items = trained
    order = [9, 2, 0, 5, 7, 1, 8, 3, 4, 6]  # mixed tasks, images and videos, prompt lengths
    media, questions, boxes = zip(*(_inputs(items[i]) for i in order), strict=True)
    batched = predictor.predict_batch(list(media), list(questions), boxes=list(boxes))
    assert [a.task for a in batched] == [ITEM_TASKS[i] for i in order]
    for answer, m, q, b in zip(batched, media, questions, boxes, strict=True):
        _assert_same(answer, predictor.predict(m, q, box=b), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sampling_is_seeded_and_stops_on_task_tokens(trained):
    _, predictor, items = trained
    media, question, box = _inputs(items[0])
    torch.manual_seed(1)
    a = predictor.predict_batch([media] * 3, [question] * 3, do_sample=True, temperature=1.5)
    torch.manual_seed(1)
    b = predictor.predict_batch([media] * 3, [question] * 3, do_sample=True, temperature=1.5)
    for x, y in zip(a, b, strict=True):
        _assert_same(x, y, rtol=0, atol=0)
    for answer in a:
        begins = [get_task_spec(t).begin_token for t in TASKS]
        assert sum(answer.text.count(tok) for tok in begins) == (answer.task is not None)


@pytest.mark.slow
def test_save_pretrained_round_trip(trained, tmp_path):
    module, predictor, items = trained
    predictor.save_pretrained(tmp_path / "predictor")
    restored = Predictor.from_pretrained(tmp_path / "predictor")
    assert restored.config() == predictor.config()
    media, questions, boxes = zip(*(_inputs(item) for item in items), strict=True)
    before = predictor.predict_batch(list(media), list(questions), boxes=list(boxes))
    after = restored.predict_batch(list(media), list(questions), boxes=list(boxes))
    for a, b in zip(before, after, strict=True):
        _assert_same(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_save_pretrained_with_lora_keeps_the_base_backbone_and_the_adapters(trained, tmp_path):
    pytest.importorskip("peft")
    module, predictor, items = trained
    module.backbone.save_pretrained(tmp_path / "base")
    from tpo.backbones.base import Backbone

    lora = TPOModule(backbone=Backbone.from_pretrained(tmp_path / "base"), heads=HEADS, stage="stage2",
                     lora=LORA)
    lora.heads.load_state_dict(module.heads.state_dict())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    adapted = Predictor(lora, num_frames=NUM_FRAMES, fps=8.0, max_new_tokens=6)
    adapted.save_pretrained(tmp_path / "predictor")
    assert not any("lora" in k for k in _safetensor_keys(tmp_path / "predictor/backbone/model"))
    restored = Predictor.from_pretrained(tmp_path / "predictor")
    media, questions, boxes = zip(*(_inputs(item) for item in items), strict=True)
    before = adapted.predict_batch(list(media), list(questions), boxes=list(boxes))
    after = restored.predict_batch(list(media), list(questions), boxes=list(boxes))
    assert any(a.task is not None for a in before)
    for a, b in zip(before, after, strict=True):  # float rounding since safetensors 0.8.0 (see
        _assert_same(a, b, rtol=1e-4, atol=1e-4)   # test_heads_sam2's round trip)
    # the saved backbone is the base model; the adapters change its outputs
    base = Backbone.from_pretrained(tmp_path / "predictor/backbone").state_dict()
    trained_state = module.backbone.state_dict()
    assert sorted(base) == sorted(trained_state)
    assert all(torch.equal(base[k], trained_state[k]) for k in base)
    batch = predictor.collator([predictor.make_item(*_inputs(items[0])[:2])])
    with torch.no_grad():
        assert not torch.allclose(lora.backbone(batch).logits, module.backbone(batch).logits)


def _safetensor_keys(directory) -> list[str]:
    from safetensors import safe_open

    keys = []
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            keys.extend(f.keys())
    assert keys
    return keys


@pytest.mark.slow
def test_evaluate_predictor_scores_like_a_hand_count(trained, synthetic):
    from torchvision.ops import box_iou

    from tpo.datamodules.datasets import RefDataset
    from tpo.datamodules.synthetic import SyntheticDataset

    _, predictor, _ = trained
    scores = evaluate_predictor(predictor, synthetic, "val", limit=2, progress=False)
    assert set(scores) == set(TASKS)
    assert all(scores[t]["n"] == 2 and scores[t]["assign_acc"] == 1.0 for t in TASKS)  # trained prompts
    for task, key in (("temporal", "R1@0.5"), ("temporal", "mIoU"), ("track", "success"), ("mask", "J&F")):
        assert 0.0 <= scores[task][key] <= 1.0
    samples = SyntheticDataset.load(synthetic).samples("box", "val")[:2]
    hits = []
    for i, sample in enumerate(samples):
        question = RefDataset(samples)[i]["turns"][0][0]
        answer = predictor.predict(sample.image, question)
        truth = torch.as_tensor(np.asarray(sample.box_xyxy, dtype=np.float64))[None]
        iou = box_iou(answer.boxes.double(), truth)
        hits.append(float(iou[0, 0] >= 0.5) if answer.task == "box" else 0.0)
    assert scores["box"]["acc@0.5"] == pytest.approx(sum(hits) / 2)


def test_media_are_read_as_the_datasets_read_them(plain, synthetic, tmp_path):
    from tpo.datamodules.video import VideoReader

    path = str(synthetic / "videos" / "clip00000.mp4")
    item = plain.load_media(path)
    clip = VideoReader(path).sample(plain.num_frames, mode="uniform")
    assert np.array_equal(item["video"], clip.frames)
    assert item["meta"]["duration"] == pytest.approx(clip.duration)
    np.testing.assert_allclose(item["meta"]["timestamps"], clip.timestamps)
    # an array of the whole video: the same frames, timestamps index / fps
    whole = VideoReader(path).get_frames(np.arange(len(VideoReader(path)))).frames
    from_array = Predictor(plain.module, num_frames=plain.num_frames, fps=8.0).load_media(whole)
    assert np.array_equal(from_array["video"], clip.frames)
    np.testing.assert_allclose(from_array["meta"]["timestamps"], clip.timestamps, atol=1e-3)
    # images: a path, a PIL image and an array give the same pixels
    from PIL import Image

    image_path = tmp_path / "frame.png"
    Image.fromarray(whole[3]).save(image_path)
    for media in (str(image_path), Image.open(image_path), whole[3]):
        loaded = plain.load_media(media)
        assert np.array_equal(loaded["image"], whole[3]) and loaded["meta"]["frame_size"] == (32, 32)


@pytest.fixture(scope="module")
def plain():
    """An untrained predictor (for input handling and generation mechanics)."""
    torch.manual_seed(0)
    module = TPOModule(backbone={**BACKBONE, "modality_adaptive": True}, heads=HEADS, stage="full")
    return Predictor(module, num_frames=NUM_FRAMES, fps=8.0, max_new_tokens=5)


def test_generation_on_modality_adaptive_layers_equals_greedy_recomputation(plain):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (NUM_FRAMES, 32, 32, 3), dtype=np.uint8)
    item = {"video": video, "turns": [("Track the object given at <track_box> through the video.", "")],
            "prompt_boxes": np.array([[0.5, 0.5, 0.2, 0.2]]), "meta": {"frame_size": (32, 32)}}
    answer = plain.predict(video, item["turns"][0][0], box=[13.0, 13.0, 19.4, 19.4])
    reference = _greedy_reference(plain.module, plain, item, plain.max_new_tokens)
    tokenizer = plain.backbone.tokenizer
    text = tokenizer.decode([i for i in reference if i != tokenizer.eos_token_id]).strip()
    assert len(reference) >= 2 and text and answer.text.startswith(text)


def test_bad_inputs_name_what_is_wrong(plain, tmp_path):
    video = np.zeros((NUM_FRAMES, 32, 32, 3), dtype=np.uint8)
    track = "Follow the red circle starting from <track_box>."
    with pytest.raises(ValueError, match=r"<track_box> but no box was given"):
        plain.predict(video, track)
    with pytest.raises(ValueError, match=r"needs exactly one <track_box> token"):
        plain.predict(video, "Follow the red circle.", box=[1, 1, 5, 5])
    with pytest.raises(ValueError, match=r"box of sample 0: \[1\.0, 1\.0, 40\.0, 5\.0\] is not .* inside"):
        plain.predict(video, track, box=[1, 1, 40, 5])
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        plain.predict(str(tmp_path / "missing.mp4"), "When is the red circle visible?")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="broken.mp4"):
        plain.predict(str(broken), "When is the red circle visible?")
    with pytest.raises(ValueError, match=r"uint8 RGB, got shape \(4, 32, 32\) dtype float32"):
        plain.predict(np.zeros((4, 32, 32), dtype=np.float32), "What is this?")
    with pytest.raises(ValueError, match="num_beams"):
        plain.predict(video, "What is this?", num_beams=2)
    with pytest.raises(ValueError, match="1 media and 2 questions"):
        plain.predict_batch([video], ["a", "b"])
    with pytest.raises(FileNotFoundError, match=r"tpo_predictor\.json.*heads\.safetensors"):
        Predictor.from_pretrained(tmp_path)


@pytest.mark.slow
def test_loaded_predictor_is_frozen_and_keeps_no_autograd_state(trained, tmp_path):
    _, predictor, items = trained
    predictor.save_pretrained(tmp_path / "predictor")
    restored = Predictor.from_pretrained(tmp_path / "predictor")
    trainable = [n for n, p in restored.module.named_parameters() if p.requires_grad]
    assert trainable == []
    media, question, box = _inputs(items[4])
    answer = restored.predict(media, question, box=box)
    assert answer.task == "track"
    assert not answer.track.requires_grad and answer.track.grad_fn is None


@pytest.mark.slow
def test_task_gather_positions_index_the_hidden_states_they_come_from(trained, monkeypatch):
    module, predictor, items = trained
    seen = []
    run_heads = module.run_heads

    def spy(batch, out):
        for gathered in out.tasks.values():
            torch.testing.assert_close(out.hidden_states[gathered.batch_index, gathered.position],
                                       gathered.embeds, rtol=0, atol=0)
            seen.extend(gathered.batch_index.tolist())
        return run_heads(batch, out)

    monkeypatch.setattr(module, "run_heads", spy)
    media, questions, boxes = zip(*(_inputs(item) for item in items), strict=True)
    predictor.predict_batch(list(media), list(questions), boxes=list(boxes))
    assert sorted(seen) == [i for i, task in enumerate(ITEM_TASKS) if task is not None]


@pytest.mark.slow
def test_a_boxless_tracking_call_gives_the_same_track_alone_and_beside_a_boxed_one(trained):
    """A tracking call on a question without a box (as a generated call can be) reads the whole
    first frame as its template whether or not a batchmate has a box."""
    module, predictor, items = trained
    spec = get_task_spec("track")
    media, question, box = _inputs(items[4])
    boxless = predictor.make_item(media, "Follow the red circle through the video.")
    boxed = predictor.make_item(media, question, box)
    for item in (boxless, boxed):
        item["turns"] = [(item["turns"][0][0], spec.begin_token + spec.placeholder_token)]
    collate = TaskCollator.from_backbone(module.backbone)
    with torch.no_grad():
        (alone,) = module.predict_step(collate([boxless]), 0)
        together = module.predict_step(collate([boxless, boxed]), 0)
    assert alone["task"] == together[0]["task"] == "track"
    torch.testing.assert_close(alone["prediction"].boxes_xywh, together[0]["prediction"].boxes_xywh,
                               rtol=1e-5, atol=1e-4)


def test_a_forced_task_answers_with_that_head_as_teacher_forcing_does(plain):
    """``task=`` calls the head whatever the untrained LLM would generate; the prediction is the
    teacher-forced ``<begin><placeholder>`` one (same forward as predict_step)."""
    rng = np.random.default_rng(1)
    video = rng.integers(0, 255, (NUM_FRAMES, 32, 32, 3), dtype=np.uint8)
    questions = {"temporal": ("When does the red circle appear?", None),
                 "box": ("Where is the red circle?", None),
                 "track": ("Track the object given at <track_box>.", [8.0, 8.0, 20.0, 20.0]),
                 "mask": ("Segment the red circle.", None)}
    for task, (question, box) in questions.items():
        answer = plain.predict(video, question, box=box, task=task)
        spec = get_task_spec(task)
        assert (answer.task, answer.text) == (task, spec.begin_token + spec.placeholder_token)
        forced = plain.make_item(video, question, box)
        forced["turns"] = [(question, answer.text)]
        with torch.no_grad():
            (truth,) = plain.module.predict_step(TaskCollator.from_backbone(plain.backbone)([forced]), 0)
        for field, value in vars(truth["prediction"]).items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(vars(answer.prediction)[field], value, rtol=1e-5, atol=1e-5,
                                           msg=f"{task}.{field}")
    with pytest.raises(ValueError, match=r"task: the model has heads for \['box', 'mask', 'temporal', "
                                         r"'track'\], not 'point'"):
        plain.predict(video, "Where?", task="point")

"""Every supported model family end to end, from a plain Hugging Face folder.

For each family: a tiny model + processor saved with transformers alone (a folder laid out as a
hub download), loaded through ``Backbone.from_pretrained`` (via ``TPOModule(backbone={"pretrained":
dir})``), LoRA + the four heads trained for a few steps in a Lightning fit (finite losses, every
task embedding receives gradient), the heads exported and reloaded onto a fresh copy of the
folder (same predictions), and a ``Predictor`` answering a question on a real video file.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from tpo.backbones import Backbone
from tpo.backbones.tiny import TINY_LLAVA_KINDS, tiny_llava
from tpo.backbones.tiny_internvl import tiny_internvl_model_and_processor
from tpo.backbones.tiny_qwen_vl import TINY_QWEN_VL_KINDS, tiny_qwen_vl_model_and_processor
from tpo.datamodules import MultiTaskDataModule, make_synthetic_dataset
from tpo.module import TPOModule
from tpo.predict import Predictor

TASKS = ["temporal", "box", "track", "mask"]
NUM_FRAMES = 4
HEADS = {
    "temporal": {"hidden_dim": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1,
                 "dim_feedforward": 64, "dropout": 0.0},
    "box": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "track": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "mask": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "mlp_dim": 64},
}
LORA = {"target_modules": ["q_proj", "v_proj"], "r": 4, "alpha": 8, "dropout": 0.0}


def _llava_pair(kind: str):
    backbone = tiny_llava(kind, with_task_tokens=False, vision_layers=1)
    return backbone.model, backbone.processor.processor


def _families() -> dict:
    families = {kind: (lambda k=kind: _llava_pair(k)) for kind in TINY_LLAVA_KINDS}
    families.update({kind: (lambda k=kind: tiny_qwen_vl_model_and_processor(k, vision_layers=1))
                     for kind in TINY_QWEN_VL_KINDS})
    families["internvl"] = lambda: tiny_internvl_model_and_processor(vision_layers=1)
    return families


FAMILIES = _families()


def write_plain_folder(kind: str, directory: Path) -> Path:
    """The family's tiny model and processor, saved as a hub download lays them out."""
    model, processor = FAMILIES[kind]()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


class _TaskEmbeddingGrads(L.Callback):
    """Records, after each backward, which task embeddings received a non-zero gradient and
    that every logged loss was finite."""

    def __init__(self) -> None:
        self.reached: set[str] = set()
        self.losses: list[float] = []

    def on_after_backward(self, trainer, pl_module) -> None:
        for name, param in pl_module.backbone.task_tokens.embeddings.items():
            if param.grad is not None and param.grad.abs().sum() > 0:
                self.reached.add(name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("families_data")
    make_synthetic_dataset(root, n_videos=8, size=32, num_frames=8, seed=2)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_a_plain_folder_trains_all_heads_exports_and_answers(kind, synthetic, tmp_path):
    torch.manual_seed(0)
    folder = write_plain_folder(kind, tmp_path / "hf")
    assert not (folder / "tpo_backbone.json").exists()
    spec = {"pretrained": str(folder), "tasks": TASKS}
    module = TPOModule(backbone=dict(spec), heads=HEADS, stage="stage2", lora=LORA)
    assert type(module.backbone) is type(Backbone.from_pretrained(folder))
    data = MultiTaskDataModule.from_synthetic(synthetic, backbone=module.backbone, num_frames=NUM_FRAMES,
                                              batch_size=8, seed=0)
    probe = _TaskEmbeddingGrads()
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[probe])
    trainer.fit(module, data)
    assert len(probe.losses) == 4 and all(math.isfinite(v) for v in probe.losses), probe.losses
    assert probe.reached == set(TASKS)

    module.eval()
    batch = next(iter(data.val_dataloader()))
    before = module.model.predict(batch)
    module.save_heads(tmp_path / "heads")
    fresh = TPOModule.from_heads(tmp_path / "heads", dict(spec)).eval()
    after = fresh.model.predict(batch)
    for a, b in zip(before, after, strict=True):
        assert a["task"] == b["task"]
        if a["prediction"] is not None:
            for field, value in vars(a["prediction"]).items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(value, vars(b["prediction"])[field], msg=field)

    predictor = Predictor(fresh, num_frames=NUM_FRAMES, max_new_tokens=4)
    video = synthetic / "videos" / sorted(p.name for p in (synthetic / "videos").glob("*.mp4"))[0]
    answer = predictor.predict(str(video), "When does the red square appear?")
    assert isinstance(answer.text, str) and len(answer.timestamps) == NUM_FRAMES
    assert answer.task is None or answer.task in TASKS

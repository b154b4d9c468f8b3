"""A config naming an unknown backbone, task, head, stage or data format fails at start-up with
the list of valid names (no training runs)."""

from __future__ import annotations

import pytest
import yaml
from test_module import SMALL_HEADS

from tpo.backbones.factory import create_backbone
from tpo.backbones.tiny import tiny_llava
from tpo.datamodules import MultiTaskDataModule, make_synthetic_dataset
from tpo.module import TPOModule

BACKBONE = {"name": "tiny_llava", "kind": "llava", "hidden_size": 64}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """A small valid config: box data only (RefCOCO-style JSON), every head."""
    root = tmp_path_factory.mktemp("config")
    make_synthetic_dataset(root / "data", n_videos=4, size=32, num_frames=4, seed=0)
    box = {"format": "refcoco_flat", "path": str(root / "data" / "refs_train.json"),
           "media_root": str(root / "data")}
    cfg = {"model": {"backbone": BACKBONE, "heads": SMALL_HEADS, "stage": "stage3"},
           "data": {"train": {"box": box}, "batch_size": 2},
           "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 1, "logger": False,
                       "enable_checkpointing": False, "enable_progress_bar": False,
                       "enable_model_summary": False, "default_root_dir": str(root / "out")}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fit(config, *overrides: str) -> None:
    from tpo.cli import main

    main(["fit", "--config", str(config), *overrides])


@pytest.mark.parametrize("override, message", [
    ("--model.backbone.name=tiny_lava",
     r"'name' must be one of \['tiny_internvl', 'tiny_llava', 'tiny_qwen_vl', 'tiny_videochat'\].*"
     r"got 'tiny_lava'"),
    ("--model.backbone.kind=llava_two",
     r"kind: expected one of \('llava', 'llava_onevision', 'llava_next_video', 'video_llava'\)"),
    ("--model.backbone.hiden_size=8",
     r"'tiny_llava' takes no \['hiden_size'\]; its arguments: \[.*'hidden_size'"),
    ("--model.heads.tempral={}",
     r"task 'tempral' has no task token .*\['temporal', 'box', 'track', 'mask'\]"),
    ("--model.heads.box.class_path=tpo.heads.BoxHeed",
     r"'tpo.heads.BoxHeed' is not a class; tpo's heads: "
     r"\['tpo.heads.temporal.TemporalGroundingHead', 'tpo.heads.box.BoxHead'"),
    ("--model.heads.box.class_path=tpo.headz.BoxHead",
     r"cannot import 'tpo.headz.BoxHead'.*tpo's heads: \[.*'tpo.heads.mask.MaskHead'"),
    ("--model.heads.box.hiden_dim=8",
     r"heads.box: BoxHead has no arguments \['hiden_dim'\]; valid: \[.*'hidden_dim'"),
    ("--model.stage=stage4", r"expected one of \['full', 'stage1', 'stage2', 'stage3'\], got 'stage4'"),
    ("--model.loss_weights.boxes=2", r"no head for tasks \['boxes'\]; heads: \['box', 'mask',"),
    ("--data.train.box.format=refcoc",
     r"format: expected one of \['activitynet', 'charades_sta', .*'refcoco_flat'.*got 'refcoc'"),
], ids=["backbone", "backbone_kind", "backbone_argument", "task", "head_class", "head_module",
        "head_argument", "stage", "loss_weight", "data_format"])
def test_cli_names_the_valid_choices(config, override, message):
    with pytest.raises(ValueError, match=message):
        fit(config, override)


def test_data_task_without_a_head_fails_before_training(config):
    heads = {"temporal": SMALL_HEADS["temporal"]}
    with pytest.raises(ValueError, match=r"data.train.box: holds 'box' samples but the model has "
                                         r"no 'box' head; heads: \['temporal'\]"):
        fit(config, f"--model.heads={heads}")


def test_constructors_name_the_valid_choices(config):
    with pytest.raises(ValueError, match=r"task 'tracks' is not registered; registered tasks: "
                                         r"\[.*'temporal'.*\]"):
        create_backbone({**BACKBONE, "tasks": ["temporal", "tracks"]})
    with pytest.raises(ValueError, match=r"tasks: unknown \['boxes'\]; the synthetic dataset has "
                                         r"\['temporal', 'box', 'track', 'mask', 'conversation'\]"):
        MultiTaskDataModule.from_synthetic(config.parent / "data", tasks=("temporal", "boxes"))
    backbone = tiny_llava("llava")
    with pytest.raises(ValueError, match=r"heads.mask.class_path: 'BoxHead' is not a class"):
        TPOModule(backbone=backbone, heads={"mask": {"class_path": "BoxHead"}})

"""Stage presets: which parameters train, in which group, at which learning rate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tpo.backbones.lora import apply_lora
from tpo.backbones.tiny import tiny_llava, tiny_videochat
from tpo.stages import STAGES, get_stage


class Wrapper(nn.Module):
    """The parameter naming of TaskModel (``TPOModule.model``): ``backbone.…`` and ``heads.<task>.…``."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({"temporal": nn.Linear(4, 4), "box": nn.Linear(4, 4)})


@pytest.fixture(params=["llava", "videochat"])
def module(request):
    pytest.importorskip("peft")
    backbone = tiny_llava("llava") if request.param == "llava" else tiny_videochat("timm")
    apply_lora(backbone, target_modules=["q_proj", "v_proj"], r=2, alpha=4)
    return Wrapper(backbone)


def trainable(module):
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_stage1_trains_lora_and_token_rows_only(module):
    groups = get_stage("stage1").param_groups(module)
    assert [g["name"] for g in groups] == ["lora"]
    names = trainable(module)
    assert names and all("lora_" in n or "trainable_tokens_delta" in n for n in names)
    assert groups[0]["lr"] == 2e-5


def test_stage2_adds_heads_and_task_embeddings_with_their_rates(module):
    groups = {g["name"]: g for g in STAGES["stage2"].param_groups(module)}
    assert set(groups) == {"temporal_token", "task_embeddings", "heads", "lora"}
    assert groups["temporal_token"]["lr"] == 2e-4 and len(groups["temporal_token"]["params"]) == 1
    assert groups["temporal_token"]["params"][0] is module.backbone.task_tokens.embeddings["temporal"]
    assert groups["task_embeddings"]["lr"] == 1e-4 and groups["heads"]["lr"] == 1e-4
    names = trainable(module)
    assert not any("vision" in n or "qformer" in n or "multi_modal_projector" in n for n in names)
    # every trainable parameter sits in exactly one group
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(names)


def test_stage3_also_trains_the_vision_encoder_and_connector(module):
    groups = {g["name"]: g for g in STAGES["stage3"].param_groups(module)}
    assert "vision" in groups and groups["vision"]["lr"] == 2e-5
    names = trainable(module)
    assert any("vision" in n for n in names)
    base_llm = [n for n, p in module.named_parameters()
                if "layers.0.mlp" in n and "vision" not in n and "lora" not in n]
    assert base_llm and not (set(base_llm) & names)  # the LLM itself trains through LoRA only


def test_frozen_experts_never_train():
    class WithExpert(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleDict({"mask": nn.Module()})
            self.heads["mask"].sam2 = nn.Linear(2, 2)
            self.heads["mask"].adapter = nn.Linear(2, 2)

    module = WithExpert()
    STAGES["stage3"].assign(module)
    assert trainable(module) == {"heads.mask.adapter.weight", "heads.mask.adapter.bias"}


def test_a_stage_that_trains_nothing_says_what_to_do():
    with pytest.raises(ValueError, match="apply LoRA"):
        STAGES["stage1"].assign(Wrapper(tiny_llava("llava")))
    with pytest.raises(ValueError, match="expected one of"):
        get_stage("stage4")


def test_optimizer_takes_the_groups(module):
    optimizer = torch.optim.AdamW(STAGES["stage2"].param_groups(module))
    assert sorted(g["lr"] for g in optimizer.param_groups) == [2e-5, 1e-4, 1e-4, 2e-4]

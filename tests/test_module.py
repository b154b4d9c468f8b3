"""TPOModule: co-training losses, gradients, Lightning fit/validate, head export."""

from __future__ import annotations

import pytest
import torch
from lightning import Trainer

from tpo.backbones.tiny import tiny_llava
from tpo.datamodules import MultiTaskDataModule, make_synthetic_dataset
from tpo.losses import weighted
from tpo.module import TPOModule

SMALL_HEADS = {
    "temporal": {
        "hidden_dim": 32,
        "num_heads": 4,
        "num_encoder_layers": 1,
        "num_decoder_layers": 1,
        "dim_feedforward": 64,
        "dropout": 0.0,
    },
    "box": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "track": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "mask": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "mlp_dim": 64},
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, n_videos=16, size=32, num_frames=8, seed=3)
    return root


def datamodule(root, backbone, **kwargs):
    options = {"batch_size": 8, "num_frames": 8, "seed": 0, **kwargs}
    return MultiTaskDataModule.from_synthetic(root, backbone=backbone, **options)


def first_batch(root, backbone, **kwargs):
    """The first training batch that holds every task the data module samples."""
    dm = datamodule(root, backbone, **kwargs)
    dm.setup("fit")
    wanted = set(kwargs.get("tasks", ())) - {"conversation"}
    for batch in dm.train_dataloader():
        if wanted <= set(batch["targets"]):
            return batch
    raise AssertionError(f"no batch holds all of {wanted}")


def test_every_head_loss_reaches_its_task_embedding(synthetic):
    module = TPOModule(backbone=tiny_llava("llava"), heads=SMALL_HEADS, stage="stage3")
    batch = first_batch(synthetic, module.backbone, tasks=("temporal", "box", "track", "mask"))
    out = module.backbone(batch)
    results = module.run_heads(batch, out)
    assert set(results) == {"temporal", "box", "track", "mask"}
    for task, (head_out, index) in results.items():
        rows = module.model.target_rows(batch, task, index)
        from tpo.tasks import get_task

        terms = module.heads[task].loss(head_out, get_task(task).head_targets(rows))
        embedding = module.backbone.task_tokens.embeddings[task]
        for name, term in terms.items():
            if name.startswith("loss_iou") or name == "loss_saliency":
                continue  # depend on the embedding only through the prediction in some cases
            (grad,) = torch.autograd.grad(term, embedding, retain_graph=True, allow_unused=True)
            assert grad is not None and grad.abs().sum() > 0, f"{task}/{name}"


def test_training_step_sums_weighted_terms_and_touches_absent_tasks(synthetic):
    module = TPOModule(
        backbone=tiny_llava("llava"), heads=SMALL_HEADS, stage="stage3", loss_weights={"temporal": 2.0}
    )
    batch = first_batch(synthetic, module.backbone, tasks=("temporal",))
    assert set(batch["targets"]) == {"temporal"}
    loss = module.training_step(batch, 0)
    out = module.backbone(batch)
    head_out, index = module.run_heads(batch, out)["temporal"]
    from tpo.tasks import get_task

    rows = module.model.target_rows(batch, "temporal", index)
    terms = module.heads["temporal"].loss(head_out, get_task("temporal").head_targets(rows))
    scaled = weighted(terms, module.heads["temporal"].weight_dict)  # the heads' terms are unweighted
    torch.testing.assert_close(loss, out.loss + 2.0 * sum(scaled.values()), rtol=1e-5, atol=1e-5)
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]  # DDP needs every trainable parameter in the graph
    assert all(p.grad.abs().sum() == 0 for p in module.heads["box"].parameters())


def test_misaligned_targets_are_named(synthetic):
    module = TPOModule(backbone=tiny_llava("llava"), heads=SMALL_HEADS)
    batch = first_batch(synthetic, module.backbone, tasks=("temporal",))
    batch["targets"]["temporal"]["sample_index"] = batch["targets"]["temporal"]["sample_index"].flip(0) + 1
    with pytest.raises(ValueError, match="targets for samples .* but task tokens in samples"):
        module.training_step(batch, 0)
    del batch["targets"]["temporal"]
    with pytest.raises(ValueError, match="no 'temporal' entry"):
        module.training_step(batch, 0)


@pytest.mark.slow
def test_fit_then_validate_logs_losses_and_both_metric_modes(synthetic, tmp_path):
    module = TPOModule(
        backbone=tiny_llava("llava"), heads=SMALL_HEADS, stage="stage3", learning_rates={"heads": 1e-3}
    )
    dm = datamodule(synthetic, module.backbone, batch_size=4)
    trainer = Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        val_check_interval=4,
    )
    trainer.fit(module, dm)
    metrics = trainer.callback_metrics
    assert "train/lm_loss" in metrics and "val/lm_loss" in metrics and "val/assign_acc" in metrics
    for task, key in (("temporal", "R1@0.5"), ("box", "acc@0.5"), ("track", "success"), ("mask", "J&F")):
        teacher, generated = metrics[f"val/{task}/{key}"], metrics[f"val_generated/{task}/{key}"]
        assert 0 <= generated <= 1 + 1e-6 and 0 <= teacher <= 1 + 1e-6
        if task != "mask":  # a missed mask call scores as an empty mask, which DAVIS credits
            assert generated <= teacher + 1e-6  # on the frames without the object
    predictions = trainer.predict(module, dm.val_dataloader())
    first = predictions[0][0]
    assert first["task"] in {"temporal", "box", "track", "mask", None}


@pytest.mark.parametrize("query_words", [False, True])
def test_heads_export_attaches_to_a_fresh_copy_of_the_backbone(synthetic, tmp_path, query_words):
    pytest.importorskip("peft")
    tiny_llava("llava", seed=5, with_task_tokens=False).save_pretrained(tmp_path / "base")
    lora = {"target_modules": ["q_proj", "v_proj"], "r": 2, "alpha": 4, "dropout": 0.0}
    module = TPOModule(
        backbone={"pretrained": str(tmp_path / "base")}, heads=SMALL_HEADS, lora=lora, stage="stage2",
        query_words=query_words,
    )
    batch = first_batch(synthetic, module.backbone, tasks=("temporal", "box"))
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()
    module.save_heads(tmp_path / "heads")
    restored = TPOModule.from_heads(tmp_path / "heads", {"pretrained": str(tmp_path / "base")})
    assert (restored.query_words is not None) == query_words
    if query_words:  # trained with the heads (stage2), exported with them
        assert not torch.equal(module.query_words.words.weight, TPOModule(
            backbone={"pretrained": str(tmp_path / "base")}, heads=SMALL_HEADS, lora=lora, stage="stage2",
            query_words=True).query_words.words.weight)
        torch.testing.assert_close(restored.query_words.words.weight, module.query_words.words.weight)
    module.eval(), restored.eval()
    with torch.no_grad():
        a, b = module.backbone(batch), restored.backbone(batch)
        torch.testing.assert_close(a.logits, b.logits)
        for task in ("temporal", "box"):
            ha, _ = module.run_heads(batch, a)[task]
            hb, _ = restored.run_heads(batch, b)[task]
            first = next(iter(vars(ha)))
            torch.testing.assert_close(getattr(ha, first), getattr(hb, first))


def test_learning_rates_must_name_groups_of_the_stage():
    with pytest.raises(ValueError, match=r"\['vision'\] are not parameter groups of stage 'stage2'"):
        TPOModule(backbone=tiny_llava("llava"), heads=SMALL_HEADS, stage="stage2", lora=None,
                  learning_rates={"vision": 1e-3})


def test_a_batch_without_labels_counts_no_task_as_called(synthetic):
    module = TPOModule(backbone=tiny_llava("llava"), heads=SMALL_HEADS)
    batch = first_batch(synthetic, module.backbone, tasks=("box",))
    with torch.no_grad():
        out = module.backbone(batch)
    loss, correct = module.model.assignment({**batch, "labels": None}, out)
    assert loss is None and correct.dtype == torch.bool and not correct.any()
    module.eval()
    with torch.no_grad():
        module.validation_step({**batch, "labels": None}, 0)
    teacher, generated = module.metrics.teacher["box"], module.metrics.generated["box"]
    assert float(generated.compute()["acc@0.5"]) == 0.0  # every sample a miss ...
    assert float(module.metrics.assign.compute()) == 0.0
    assert teacher.update_called  # ... while the teacher-forced boxes are still scored


def test_an_interrupted_save_heads_leaves_the_previous_export_whole(tmp_path, monkeypatch):
    module = TPOModule(backbone=tiny_llava("llava"), heads=SMALL_HEADS)
    module.save_heads(tmp_path / "heads")
    before = {p.name: p.read_bytes() for p in (tmp_path / "heads").iterdir()}

    def interrupted(state, filename):
        with open(filename, "wb") as f:
            f.write(b"half a safetensors file")
        raise KeyboardInterrupt

    monkeypatch.setattr("tpo.export.save_file", interrupted)
    with torch.no_grad():
        next(module.heads.parameters()).add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        module.save_heads(tmp_path / "heads")
    assert {p.name: p.read_bytes() for p in (tmp_path / "heads").iterdir()} == before

"""A fifth task registered from this file alone: point grounding (one (x, y) per image).

It is trained with the four built-in tasks through ``TPOModule`` in a Lightning fit, scored in
validation with its own metric, exported and reloaded with ``save_heads`` / ``from_heads``, and
answered through ``Predictor``, without editing any library file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from lightning import Trainer
from torch import Tensor, nn
from torchmetrics import Metric

from tpo.backbones.tiny import tiny_llava
from tpo.datamodules import MultiTaskDataModule, make_synthetic_dataset
from tpo.datamodules.collate import TaskCollator
from tpo.datamodules.datasets import RefDataset
from tpo.datamodules.synthetic import SyntheticDataset
from tpo.module import TPOModule
from tpo.predict import Predictor
from tpo.tasks import Task, TaskSpec, get_task, list_tasks, register_task, unregister_task

HEADS = {
    "temporal": {"hidden_dim": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1,
                 "dim_feedforward": 64, "dropout": 0.0},
    "box": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "track": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "dim_feedforward": 64},
    "mask": {"hidden_dim": 32, "num_heads": 4, "num_layers": 1, "mlp_dim": 64},
    "point": {"hidden_dim": 32},
}


# ---------------------------------------------------------------------------- the point task
@dataclass
class PointOutput:
    """``points (B, 2)`` normalised (x, y)."""

    points: Tensor


@dataclass
class PointPrediction:
    """``point_xy (2,)`` pixels."""

    point_xy: Tensor


class PointHead(nn.Module):
    """Task embedding + mean visual token -> one normalised (x, y)."""

    def __init__(self, *, embed_dim: int, visual_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(embed_dim + visual_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, 2))

    def forward(self, task_embeds: Tensor, visual: Tensor) -> PointOutput:
        """``task_embeds (B, D)``, ``visual (B, N, D_v)``."""
        features = torch.cat([task_embeds, visual.mean(1)], -1)
        return PointOutput(points=self.mlp(features).sigmoid())

    def loss(self, output: PointOutput, targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"loss_point": (output.points - targets["point"].to(output.points)).abs().sum(-1).mean()}

    @torch.no_grad()
    def postprocess(self, output: PointOutput, meta: Sequence[Mapping]) -> list[PointPrediction]:
        out = []
        for point, m in zip(output.points, meta, strict=True):
            height, width = m["image_size"]
            out.append(PointPrediction(point_xy=point.float().cpu() * torch.tensor([width, height])))
        return out


class PointAccuracy(Metric):
    """Fraction of points within ``radius`` (fraction of the image diagonal) of the truth, and
    the mean distance in pixels."""

    def __init__(self, radius: float = 0.1) -> None:
        super().__init__()
        self.radius = radius
        self.add_state("hits", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("distance", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, truth: Tensor, diagonal: Tensor) -> None:
        distance = (pred.double() - truth.double()).norm(dim=-1)
        self.hits += (distance <= self.radius * diagonal.double()).sum()
        self.distance += distance.sum()
        self.count += len(distance)

    def compute(self) -> dict[str, Tensor]:
        return {"acc@0.1": self.hits / self.count, "distance": self.distance / self.count}


class PointDataset(RefDataset):
    """The synthetic referring-expression images, asked for the object's centre."""

    task = "point"

    def load(self, index: int, rng: np.random.Generator) -> dict:
        item = super().load(index, rng)
        item["target"] = {"point": item["target"]["boxes"][:2]}
        return item


class PointTask(Task):
    head_class = PointHead
    headline = "acc@0.1"
    templates = ("Point at {query}.", "Where is the centre of {query}?")

    def make_metric(self) -> PointAccuracy:
        return PointAccuracy()

    def head_inputs(self, out, index, head) -> dict:
        return {"visual": out.visual[index, 0]}

    def score(self, metric, predictions, rows, meta) -> None:
        sizes = torch.tensor([[m["image_size"][1], m["image_size"][0]] for m in meta],
                             dtype=torch.float64)
        truth = rows["point"].double().cpu() * sizes
        missed = torch.full((2,), -1e9, dtype=torch.float64)  # a sample that did not call the task
        pred = torch.stack([p.point_xy.double() if p is not None else missed for p in predictions])
        metric.update(pred, truth, sizes.norm(dim=-1))

    def make_dataset(self, samples, *, media_root=None, num_frames=None, sampling=None, **options):
        return PointDataset(samples, **options)


@pytest.fixture(scope="module")
def point_task():
    task = register_task(PointTask(TaskSpec("point", "<point_begin>", "<point>")))
    yield task
    unregister_task("point")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom_task")
    make_synthetic_dataset(root, n_videos=12, size=32, num_frames=8, seed=2)
    return root


def _datamodule(root, backbone, task: Task) -> MultiTaskDataModule:
    data = SyntheticDataset.load(root)
    base = MultiTaskDataModule.from_synthetic(root, backbone=backbone, num_frames=4,
                                              tasks=("temporal", "box", "track", "mask"))
    points = {split: task.make_dataset(data.samples("box", split)) for split in ("train", "val")}
    train = dict(zip(base.train_set.names, base.train_set.datasets, strict=True)) | {"point": points["train"]}
    val = dict(zip(base.val_set.names, base.val_set.datasets, strict=True)) | {"point": points["val"]}
    return MultiTaskDataModule(train=train, val=val, batch_size=6, backbone=backbone, seed=1)


@pytest.mark.slow
def test_a_task_registered_outside_the_library_trains_scores_exports_and_answers(
    point_task, synthetic, tmp_path
):
    assert list_tasks()[-1] == "point" and get_task("point") is point_task
    torch.manual_seed(0)
    tiny_llava("llava", seed=3, with_task_tokens=False).save_pretrained(tmp_path / "base")
    module = TPOModule(backbone={"pretrained": str(tmp_path / "base")}, heads=HEADS, stage="stage2",
                       learning_rates={"heads": 3e-3})
    assert "point" in module.backbone.task_tokens.task_names
    dm = _datamodule(synthetic, module.backbone, point_task)

    # a short fit co-trains it with the other four tasks
    trainer = Trainer(max_steps=20, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=tmp_path)
    untrained = {k: v.clone() for k, v in module.heads["point"].state_dict().items()}
    trainer.fit(module, dm)
    assert all(not torch.equal(v, module.heads["point"].state_dict()[k]) for k, v in untrained.items())

    # validation scores it with its own metric, beside the built-in ones
    evaluator = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    logged = evaluator.validate(module, dm, verbose=False)[0]
    assert {"val/point/acc@0.1", "val/point/distance", "val/box/acc@0.5"} <= set(logged)
    assert 0.0 <= logged["val/point/acc@0.1"] <= 1.0

    # export and reload: the same predictions from a fresh copy of the backbone
    module.save_heads(tmp_path / "heads")
    restored = TPOModule.from_heads(tmp_path / "heads", {"pretrained": str(tmp_path / "base")})
    assert type(restored.heads["point"]) is PointHead
    batch = next(b for b in dm.val_dataloader() if "point" in b["targets"])
    module.eval(), restored.eval()
    with torch.no_grad():
        a = [r for r in module.predict_step(batch, 0) if r["task"] == "point"]
        b = [r for r in restored.predict_step(batch, 0) if r["task"] == "point"]
    assert a and len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x["prediction"].point_xy, y["prediction"].point_xy)

    # its loss is part of the training loss: the reloaded module overfits one batch
    batch = next(b for b in dm.train_dataloader() if "point" in b["targets"])
    before = _point_loss(restored, batch)
    restored.train()
    optimizer = torch.optim.AdamW([p for p in restored.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        restored.training_step(batch, 0).backward()
        optimizer.step()
    assert _point_loss(restored, batch) < 0.5 * before

    # Predictor: a generated point call (decoding constrained to " <point_begin>", the answer the
    # LM is trained on) is answered by the point head, as teacher forcing answers it
    predictor = Predictor(restored, num_frames=4, max_new_tokens=4)
    item = point_task.make_dataset(SyntheticDataset.load(synthetic).samples("box", "val"))[0]
    question = item["turns"][0][0]
    tokenizer = restored.backbone.tokenizer
    space = tokenizer.encode(" ", add_special_tokens=False)
    begin = tokenizer.convert_tokens_to_ids("<point_begin>")

    def call_the_point_task(batch_id: int, ids: Tensor) -> list[int]:
        return [begin] if int(ids[-1]) in space else space

    answer = predictor.predict(item["image"], question, prefix_allowed_tokens_fn=call_the_point_task)
    assert answer.task == "point" and answer.text == "<point_begin><point>"
    forced = predictor.make_item(item["image"], question)
    forced["turns"] = [(question, "<point_begin><point>")]
    with torch.no_grad():
        (teacher,) = restored.predict_step(TaskCollator.from_backbone(restored.backbone)([forced]), 0)
    torch.testing.assert_close(answer.prediction.point_xy, teacher["prediction"].point_xy,
                               rtol=1e-5, atol=1e-4)


def _point_loss(module: TPOModule, batch: dict) -> float:
    """The point head's loss on ``batch`` (evaluation mode, no gradients)."""
    module.eval()
    with torch.no_grad():
        out = module.backbone(batch)
        head_out, _ = module.run_heads(batch, out)["point"]
        targets = get_task("point").head_targets(batch["targets"]["point"])
        loss = module.heads["point"].loss(head_out, targets)["loss_point"]
    return float(loss)

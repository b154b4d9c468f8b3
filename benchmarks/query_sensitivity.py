"""Does a trained model's task embedding read the query words? Trained vs untrained, in one run.

For each task, held-out questions go through the backbone twice: as written, and with every
colour word swapped for another colour (in the instruction, in the answer's restated query as
``tpo demo`` trains with ``echo_query``, and in the query the heads read with ``query_words``).
The figure is the change of the task embedding a head receives (hidden state at the task
placeholder, plus the query words where the model has them) relative to how far apart the
embeddings of different questions lie: ``|e_swapped - e| / mean_i |e_i - mean(e)|`` over a batch,
averaged over the questions. A head can only tell the two objects of a clip apart through that
change; near 0 the embedding does not say which object the question names. The same
is measured on an untrained model of the same configuration (the reference), on the same
batches, and the ratio trained / untrained is printed per task (``query_sensitivity_ratio_<task>``):
below 1 means training taught the LLM to ignore the words.

    python benchmarks/query_sensitivity.py demo_out/model demo_out/data [--batches 4]

``demo_out`` is what ``tpo demo --out demo_out`` wrote (the Predictor folder and the dataset).
Tasks whose held-out prompts name no colour (GOT-10k tracking names the class only) have no
figure. A smoke test runs an untrained Predictor on a few clips with ``--batches 1``.
"""

from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from tpo.datamodules import MultiTaskDataModule
from tpo.datamodules.synthetic import COLOURS
from tpo.module import TPOModule
from tpo.predict import Predictor


def swap_colour_words(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """``input_ids`` with each colour word's token replaced by the next colour's."""
    names = list(COLOURS)
    ids = [tokenizer.convert_tokens_to_ids("Ġ" + name) for name in names]
    swapped = input_ids.clone()
    for k, token in enumerate(ids):
        swapped[input_ids == token] = ids[(k + 1) % len(ids)]
    return swapped


@torch.no_grad()
def sensitivity(models: dict[str, TPOModule], data_root: str, batches: int) -> dict[str, dict[str, float]]:
    """``{model: {task: mean change of the task embedding when the colour words are swapped,
    relative to the batch's spread}}`` (the spread: the mean distance of the batch's embeddings
    from their mean); every model reads the same held-out batches (collated once, by the first
    model's backbone: the models share one configuration, hence one tokenizer)."""
    first = next(iter(models.values()))
    changes: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    for module in models.values():
        module.eval()
    for task in first.heads:
        data = MultiTaskDataModule.from_synthetic(
            data_root, backbone=first.backbone, batch_size=8, num_frames=8, seed=0, num_workers=0,
            tasks=(task,), echo_query=True,
        )
        data.setup("validate")
        loader = data.val_dataloader()
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader
        for b, batch in enumerate(tqdm(loader, desc=task, total=batches, leave=False)):
            if b == batches:
                break
            swapped_ids = swap_colour_words(batch["input_ids"], first.backbone.tokenizer)
            if torch.equal(swapped_ids, batch["input_ids"]):
                continue  # no colour word (GOT-10k tracking prompts name the class only)
            other = {**batch, "input_ids": swapped_ids}
            if "query_ids" in batch:
                other["query_ids"] = swap_colour_words(batch["query_ids"], first.backbone.tokenizer)
            for name, module in models.items():
                plain, swapped = (head_embeddings(module, b, task) for b in (batch, other))
                spread = (plain - plain.mean(0)).norm(dim=-1).mean()
                change = (swapped - plain).norm(dim=-1) / spread
                changes[name].setdefault(task, []).extend(change.tolist())
    return {name: {task: sum(v) / len(v) for task, v in per_task.items()}
            for name, per_task in changes.items()}


def head_embeddings(module: TPOModule, batch: dict, task: str) -> torch.Tensor:
    """``(n, D)`` the task embeddings ``task``'s head receives for ``batch``."""
    gathered = module.backbone(batch).tasks[task]
    return module.head_embeddings(batch, gathered.embeds, gathered.batch_index).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a Predictor folder (tpo demo's out/model)")
    parser.add_argument("data", help="the synthetic dataset it was trained on (tpo demo's out/data)")
    parser.add_argument("--batches", type=int, default=4, help="held-out batches of 8 per task")
    args = parser.parse_args()
    torch.manual_seed(0)
    trained = Predictor.from_pretrained(args.model).module
    from tpo.demo import DEMO_MODEL

    # the reference: the demo's configuration, with the trained backbone's modality-adaptive
    # layers if it has them (``tpo demo --modality-adaptive``)
    adaptive = trained.backbone.modality_adaptive
    backbone = {**DEMO_MODEL["backbone"],
                "modality_adaptive": False if adaptive is None else adaptive.num_modalities}
    untrained = TPOModule(**{**DEMO_MODEL, "backbone": backbone})
    result = sensitivity({"trained": trained, "untrained": untrained}, args.data, args.batches)
    ours, reference = result["trained"], result["untrained"]
    print(f"{'task':10s} {'trained':>9s} {'untrained':>10s}")
    for task in trained.heads:
        if task not in ours:
            print(f"{task:10s} n/a: its prompts name no colour")
            continue
        print(f"{task:10s} {ours[task]:9.4f} {reference[task]:10.4f}")
    for task in ours:
        print(f"query_sensitivity_ratio_{task}: {ours[task] / reference[task]:.2f} (target > 1)")


if __name__ == "__main__":
    main()

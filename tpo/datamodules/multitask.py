"""Several task datasets behind one Lightning data module, mixed by per-task weights."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence

import lightning as L
import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from tpo.datamodules.collate import ChatFormat, TaskCollator
from tpo.datamodules.datasets import (
    ConversationDataset,
    TaskDataset,
)
from tpo.datamodules.specs import DatasetSpec
from tpo.datamodules.synthetic import TASKS as SYNTHETIC_TASKS
from tpo.datamodules.synthetic import SyntheticDataset
from tpo.tasks import get_task

__all__ = ["MultiTaskDataModule", "MultiTaskDataset", "MultiTaskSampler", "ResumableDataLoader",
           "synthetic_task_dataset"]

log = logging.getLogger(__name__)


def _build(datasets: Mapping[str, TaskDataset | DatasetSpec | Mapping]
           ) -> dict[str, TaskDataset]:
    out = {}
    for name, value in datasets.items():
        if isinstance(value, Mapping):
            value = DatasetSpec(**value)
        out[name] = value.build() if isinstance(value, DatasetSpec) else value
    return out


class MultiTaskDataset(Dataset):
    """Named task datasets addressed by keys ``(dataset_index, sample_index, draw_seed)``."""

    def __init__(self, datasets: Mapping[str, TaskDataset]) -> None:
        if not datasets:
            raise ValueError("datasets: expected at least one task dataset")
        self.names = list(datasets)
        self.datasets = [datasets[n] for n in self.names]

    @property
    def sizes(self) -> list[int]:
        return [len(d) for d in self.datasets]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, key: tuple[int, int, int] | tuple[int, int, int, bool]) -> dict:
        """The item of ``(dataset, sample, draw_seed)``; a fourth element ``True`` marks a padding
        repeat (evaluation): the item's ``meta`` then says ``"padding": True``."""
        d, i, seed, *padding = key
        item = self.datasets[d][(i, seed)]
        if padding and padding[0]:
            item["meta"] = {**item.get("meta", {}), "padding": True}
        return item


class MultiTaskSampler(DistributedSampler):
    """Keys ``(dataset, sample, draw_seed)`` for :class:`MultiTaskDataset`.

    ``shuffle=True``: ``num_samples`` draws per epoch; each picks a dataset with probability
    proportional to its weight, then the next sample of that dataset's own permutation (so a
    dataset is covered before any sample repeats). ``shuffle=False``: every sample of every
    dataset once, in order. Either way the key list is a function of ``(seed, epoch)`` only and
    is split across ranks as :class:`~torch.utils.data.DistributedSampler` does (padded by
    repetition to a multiple of the world size), so Lightning does not wrap it again. With
    ``shuffle=False`` (evaluation) the repeats are marked ``(dataset, sample, 0, True)``: every
    process runs the same number of batches, and :class:`~tpo.TPOModule` does not score the
    repeats, so each sample counts once (sharded metrics equal one process's).

    Args:
        sizes: number of samples of each dataset.
        weights: sampling weight of each dataset (default: proportional to the sizes).
        num_samples: draws per epoch over all ranks (default: the sum of the sizes).
        num_replicas / rank: default from ``torch.distributed`` when initialised, else 1 / 0.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float] | None = None, *,
                 num_samples: int | None = None, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        if any(n <= 0 for n in sizes):
            raise ValueError(f"sizes: every dataset needs samples, got {list(sizes)}")
        weights = np.asarray(sizes if weights is None else weights, dtype=np.float64)
        if weights.shape != (len(sizes),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights: expected {len(sizes)} non-negative weights with a "
                             f"positive sum, got {weights.tolist()}")
        initialised = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (
            dist.get_world_size() if initialised else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        self.sizes, self.probs = list(sizes), weights / weights.sum()
        self.shuffle, self.seed, self.epoch, self.drop_last = shuffle, seed, 0, False
        self.total = (num_samples or sum(sizes)) if shuffle else sum(sizes)
        self.num_samples = math.ceil(self.total / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self._start: tuple[int, int] | None = None

    def start_after(self, epoch: int, consumed: int) -> None:
        """Make the next iteration over ``epoch`` skip the first ``consumed`` keys of the epoch
        (over all ranks, in the padded order the ranks take them in), to resume it mid-way.

        Applies once: later iterations cover whole epochs again. When ``consumed`` is not a
        multiple of the world size (a resume with fewer or more processes) the rest is padded
        by repetition again, so every rank gets the same number of keys.
        """
        if consumed < 0:
            raise ValueError(f"consumed: expected >= 0 keys, got {consumed}")
        self._start = (int(epoch), int(consumed))

    def keys(self) -> list[tuple[int, int, int]]:
        """All ranks' keys of the current epoch, before the split."""
        if not self.shuffle:
            return [(d, i, 0) for d, n in enumerate(self.sizes) for i in range(n)]
        rng = np.random.default_rng([self.seed, self.epoch])
        choice = rng.choice(len(self.sizes), size=self.total, p=self.probs)
        orders = [rng.permutation(n) for n in self.sizes]
        seen = [0] * len(self.sizes)
        seeds = rng.integers(0, 2**31 - 1, size=self.total)
        keys = []
        for k, d in enumerate(choice):
            d = int(d)
            keys.append((d, int(orders[d][seen[d] % self.sizes[d]]), int(seeds[k])))
            seen[d] += 1
        return keys

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        keys = self.keys()
        repeats = keys[: self.total_size - len(keys)]
        keys += repeats if self.shuffle else [(*key, True) for key in repeats]
        if self._start is not None and self._start[0] == self.epoch:
            keys = keys[self._start[1]:]
            keys += keys[: -len(keys) % self.num_replicas]
            self._start = None
        return iter(keys[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` over a :class:`MultiTaskSampler` that can resume
    an epoch mid-way.

    It counts the batches it has handed out in the sampler's current epoch (in the main process,
    as they leave the loader, so batches the workers load ahead do not count). Lightning keeps
    its :meth:`state_dict` in every checkpoint (``loops.fit_loop.state_dict.combined_loader``)
    and gives it back to :meth:`load_state_dict` when ``trainer.fit(..., ckpt_path=...)``
    resumes, so the next iteration over that epoch starts with the batch after the last one
    trained on, on every rank, instead of at the start of the epoch. Exact when batch size and
    number of processes are those of the run that saved the checkpoint; the items themselves are
    a function of (seed, epoch, position), see :class:`MultiTaskSampler`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, MultiTaskSampler):
            raise ValueError(f"sampler: ResumableDataLoader needs a MultiTaskSampler, got "
                             f"{type(self.sampler).__name__}")
        self._epoch, self._batches = self.sampler.epoch, 0
        self._resume: dict | None = None

    def __iter__(self) -> Iterator:
        # a generator: the body runs at the first next(), after Lightning's set_epoch()
        sampler = self.sampler
        resume = self._resume
        if resume is not None and resume["epoch"] == sampler.epoch:
            consumed = resume["batches"] * resume["batch_size"] * resume["num_replicas"]
            sampler.start_after(sampler.epoch, consumed)
            self._batches, self._resume = resume["batches"], None
        else:
            self._batches = 0
        self._epoch = sampler.epoch
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``epoch``, ``batches`` handed out in it (per process), ``batch_size``,
        ``num_replicas``."""
        return {"epoch": self._epoch, "batches": self._batches, "batch_size": self.batch_size,
                "num_replicas": self.sampler.num_replicas}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        """Resume: the next iteration over ``state_dict["epoch"]`` skips what was handed out."""
        missing = {"epoch", "batches", "batch_size", "num_replicas"} - set(state_dict)
        if missing:
            raise ValueError(f"ResumableDataLoader state: missing {sorted(missing)}")
        self._resume = dict(state_dict)


def synthetic_task_dataset(data: SyntheticDataset, task: str, split: str, *, num_frames: int,
                           sampling: str, **options) -> TaskDataset:
    """The dataset of one task and split of a synthetic folder, read through the public format
    readers; ``options`` (``on_error``, ``frame_size``, ``seed``, ``cache``...) go to it."""
    samples = data.samples(task, split)
    if task == ConversationDataset.task:
        return ConversationDataset(samples, num_frames=num_frames, sampling=sampling, **options)
    return get_task(task).make_dataset(samples, media_root=os.path.join(data.root, "videos"),
                                       num_frames=num_frames, sampling=sampling, **options)


class MultiTaskDataModule(L.LightningDataModule):
    """Train and validation loaders over several task datasets; batches may mix tasks.

    Args:
        train: ``{name: TaskDataset | DatasetSpec}`` for training (specs, or dicts of their
            fields as YAML gives them, are read here).
        val: the same for validation (each sample once, in order), or ``None``.
        predict: the same for ``tpo predict`` / ``Trainer.predict`` (each sample once, in order);
            ``None``: the validation datasets.
        weights: ``{name: weight}`` sampling weights (default: proportional to sizes).
        batch_size: samples per batch (per process).
        num_workers: DataLoader workers; decoders are opened inside them.
        samples_per_epoch: training draws per epoch over all processes (default: all samples).
        seed: the sampler's seed; the same seed gives the same batches.
        backbone: the model's backbone (``.processor``, ``.tokenizer``); when ``None`` and no
            ``collator`` is given, the trainer's ``lightning_module.backbone`` is used.
        collator: a ready :class:`TaskCollator` instead of one built from the backbone.
        chat: the chat format of a collator built here.
        collator_options: more keyword arguments of a collator built here (e.g.
            ``{"images_as_videos": True}``, ``{"padding_side": "left"}``).

    Samples skipped on load errors (datasets with ``on_error="skip"``) are counted in
    :attr:`num_skipped` and logged as batches arrive.

    The training loader is a :class:`ResumableDataLoader`: a Lightning checkpoint taken mid-epoch
    resumes with the next batch of that epoch.
    """

    def __init__(self, *, train: Mapping[str, TaskDataset | DatasetSpec],
                 val: Mapping[str, TaskDataset | DatasetSpec] | None = None,
                 predict: Mapping[str, TaskDataset | DatasetSpec] | None = None,
                 weights: Mapping[str, float] | None = None, batch_size: int = 8,
                 num_workers: int = 0, samples_per_epoch: int | None = None, seed: int = 0,
                 backbone=None, collator: TaskCollator | None = None,
                 chat: ChatFormat | None = None,
                 collator_options: Mapping | None = None) -> None:
        super().__init__()
        self.train_set = MultiTaskDataset(_build(train))
        self.val_set = MultiTaskDataset(_build(val)) if val else None
        self.predict_set = MultiTaskDataset(_build(predict)) if predict else self.val_set
        unknown = set(weights or {}) - set(train)
        if unknown:
            raise ValueError(f"weights: {sorted(unknown)} are not training datasets "
                             f"({sorted(train)})")
        self.weights = None if weights is None else [float(weights.get(n, 0.0))
                                                     for n in self.train_set.names]
        self.batch_size, self.num_workers = batch_size, num_workers
        self.samples_per_epoch, self.seed = samples_per_epoch, seed
        self.backbone, self._collator, self.chat = backbone, collator, chat
        self.collator_options = dict(collator_options or {})
        self.num_skipped = 0
        self.skipped: list[str] = []

    @classmethod
    def from_synthetic(cls, root: str | os.PathLike, *,
                       tasks: Sequence[str] = SYNTHETIC_TASKS,
                       num_frames: int | None = None, frame_size: tuple[int, int] | None = None,
                       on_error: str = "raise", cache: bool = True, echo_query: bool = False,
                       **kwargs) -> MultiTaskDataModule:
        """A data module over a :func:`~tpo.datamodules.make_synthetic_dataset` folder, read
        through the public format readers; random frame sampling for training, uniform for
        validation; ``cache`` keeps the decoded clips in memory (see the datasets);
        ``echo_query``: answers restate the query (as ``tpo demo`` trains,
        :func:`~tpo.datamodules.prompts.make_prompt`)."""
        unknown = [t for t in tasks if t not in SYNTHETIC_TASKS]
        if unknown:
            raise ValueError(f"tasks: unknown {unknown}; the synthetic dataset has "
                             f"{list(SYNTHETIC_TASKS)}")
        data = SyntheticDataset.load(root)
        num_frames = num_frames or data.num_frames
        common = {"num_frames": num_frames, "on_error": on_error, "frame_size": frame_size,
                  "seed": kwargs.get("seed", 0), "cache": cache, "echo_query": echo_query}
        train = {t: synthetic_task_dataset(data, t, "train", sampling="random", **common)
                 for t in tasks}
        val = ({t: synthetic_task_dataset(data, t, "val", sampling="uniform", **common) for t in tasks}
               if "val" in data.files else None)
        return cls(train=train, val=val, **kwargs)

    @property
    def collator(self) -> TaskCollator:
        if self._collator is None:
            backbone = self.backbone
            if backbone is None and self.trainer is not None:
                backbone = getattr(self.trainer.lightning_module, "backbone", None)
            if backbone is None:
                raise ValueError("MultiTaskDataModule: no collator; pass backbone= or collator=, "
                                 "or attach to a trainer whose module has .backbone")
            self._collator = TaskCollator.from_backbone(backbone, chat=self.chat,
                                                        **self.collator_options)
        return self._collator

    def setup(self, stage: str) -> None:
        """At start-up, check that the trainer's model (one with ``heads``, as
        :class:`~tpo.TPOModule`) has a head for the task of every dataset but conversations."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        heads = getattr(module, "heads", None)
        if heads is None:
            return
        for split, data in (("train", self.train_set), ("val", self.val_set)):
            for name, dataset in zip(data.names, data.datasets, strict=True) if data else ():
                task = getattr(dataset, "task", None)
                if task not in (None, ConversationDataset.task) and task not in heads:
                    raise ValueError(
                        f"data.{split}.{name}: holds {task!r} samples but the model has no "
                        f"{task!r} head; heads: {sorted(heads)} (add model.heads.{task} or "
                        "drop the dataset)")

    def _rank_world(self) -> tuple[int | None, int | None]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return None, None

    def _loader(self, dataset: MultiTaskDataset, sampler: MultiTaskSampler,
                cls: type[DataLoader] = DataLoader) -> DataLoader:
        return cls(dataset, batch_size=self.batch_size, sampler=sampler,
                   num_workers=self.num_workers, collate_fn=self.collator,
                   persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> ResumableDataLoader:
        rank, world = self._rank_world()
        sampler = MultiTaskSampler(self.train_set.sizes, self.weights,
                                   num_samples=self.samples_per_epoch, shuffle=True,
                                   seed=self.seed, num_replicas=world, rank=rank)
        return self._loader(self.train_set, sampler, ResumableDataLoader)

    def val_dataloader(self) -> DataLoader | list:
        return self._in_order(self.val_set)

    def predict_dataloader(self) -> DataLoader | list:
        if self.predict_set is None:
            raise ValueError("MultiTaskDataModule: nothing to predict; give predict= (or val=) datasets")
        return self._in_order(self.predict_set)

    def _in_order(self, dataset: MultiTaskDataset | None) -> DataLoader | list:
        """Each sample of ``dataset`` once, in order, split over the processes."""
        if dataset is None:
            return []
        rank, world = self._rank_world()
        sampler = MultiTaskSampler(dataset.sizes, shuffle=False, seed=self.seed,
                                   num_replicas=world, rank=rank)
        return self._loader(dataset, sampler)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Count and log the samples the datasets skipped while loading this batch."""
        for message in batch.get("skipped", []):
            self.num_skipped += 1
            self.skipped.append(message)
            log.warning("skipped sample (%d so far): %s", self.num_skipped, message)
        return batch

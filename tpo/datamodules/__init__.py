"""Video data: readers, public dataset formats, prompts, multi-task batches, synthetic data."""

from tpo.datamodules.collate import ChatFormat, TaskCollator
from tpo.datamodules.datasets import (
    ConversationDataset,
    MaskDataset,
    MomentDataset,
    RefDataset,
    TaskDataset,
    TrackDataset,
)
from tpo.datamodules.multitask import (
    MultiTaskDataModule,
    MultiTaskDataset,
    MultiTaskSampler,
    ResumableDataLoader,
)
from tpo.datamodules.prompts import Prompt, make_prompt
from tpo.datamodules.samples import (
    ConversationSample,
    MaskSample,
    MomentSample,
    RefSample,
    TrackSample,
)
from tpo.datamodules.specs import DatasetSpec
from tpo.datamodules.synthetic import SyntheticDataset, make_synthetic_dataset
from tpo.datamodules.video import Clip, VideoDecodeError, VideoReader

__all__ = [
    "ChatFormat", "Clip", "ConversationDataset", "DatasetSpec", "ConversationSample", "MaskDataset",
    "MaskSample", "MomentDataset", "MomentSample", "MultiTaskDataModule", "MultiTaskDataset",
    "MultiTaskSampler",
    "ResumableDataLoader", "Prompt", "RefDataset", "RefSample", "SyntheticDataset", "TaskCollator",
    "TaskDataset", "TrackDataset", "TrackSample", "VideoDecodeError", "VideoReader",
    "make_prompt", "make_synthetic_dataset",
]

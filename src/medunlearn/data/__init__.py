"""MedMNIST data layer: metadata, files, task views, in-memory splits, batched augmentation."""

from medunlearn.data.dataset import MedDataset, Split, iterate_batches, load_dataset
from medunlearn.data.info import DEFAULT_POSITIVE_CLASSES, DatasetInfo, dataset_flags, get_info
from medunlearn.data.views import TaskView, resolve_view

__all__ = [
    "DEFAULT_POSITIVE_CLASSES", "DatasetInfo", "MedDataset", "Split", "TaskView", "dataset_flags",
    "get_info", "iterate_batches", "load_dataset", "resolve_view",
]

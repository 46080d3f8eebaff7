"""Data layer: sources (MedMNIST, arrays, files), task views, in-memory splits, augmentation."""

from medunlearn.data.dataset import (
    SPLITS,
    Dataset,
    MedDataset,
    Split,
    from_arrays,
    iterate_batches,
    load_medmnist,
)
from medunlearn.data.info import DEFAULT_POSITIVE_CLASSES, DatasetInfo, dataset_flags, get_info
from medunlearn.data.sources import (
    DataSource,
    data_identity,
    load_dataset,
    load_from_record,
    register_source,
)
from medunlearn.data.views import TaskView, resolve_view

__all__ = [
    "DEFAULT_POSITIVE_CLASSES", "SPLITS", "DataSource", "Dataset", "DatasetInfo", "MedDataset",
    "Split", "TaskView", "data_identity", "dataset_flags", "from_arrays", "get_info",
    "iterate_batches", "load_dataset", "load_from_record", "load_medmnist", "register_source",
    "resolve_view",
]

"""In-memory MedMNIST datasets: whole splits as tensors, subsets as index tensors.

Images stay ``uint8`` in memory (a 224 px PathMNIST would not fit as float) and are converted,
augmented and normalised a batch at a time. Each training sample has a stable identity: its
index in the training split and the SHA-256 of its image bytes as stored in the MedMNIST file
(the ``uint8`` array in (H, W) or (H, W, C) layout, C-contiguous), so that a deletion request can
name images by hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medunlearn.config import DataConfig
from medunlearn.data.augment import POLICIES, augment_batch
from medunlearn.data.files import locate, read_npz, verify_md5
from medunlearn.data.info import DatasetInfo, get_info
from medunlearn.data.views import TaskView, resolve_view
from medunlearn.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split held in memory."""

    name: str
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64, in the view's label space
    native_labels: np.ndarray  # (N, L) labels as stored in the file
    source_index: np.ndarray  # (N,) row of each sample in the file's split
    _hashes: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def hashes(self) -> list[str]:
        """SHA-256 of each image's stored bytes (computed once)."""
        if self._hashes is None:
            hwc = self.images.permute(0, 2, 3, 1)  # back to the stored (N, H, W, C) layout
            if hwc.shape[-1] == 1:
                hwc = hwc[..., 0]
            arr = np.ascontiguousarray(hwc.numpy())
            self._hashes = [hashlib.sha256(a.tobytes()).hexdigest() for a in arr]
        return self._hashes


@dataclass
class MedDataset:
    """A MedMNIST dataset under a task view, all splits in memory."""

    info: DatasetInfo
    config: DataConfig
    view: TaskView
    path: Path
    md5: str | None
    splits: dict[str, Split]

    @property
    def train(self) -> Split:
        return self.splits["train"]

    @property
    def val(self) -> Split:
        return self.splits["val"]

    @property
    def test(self) -> Split:
        return self.splits["test"]

    @property
    def in_channels(self) -> int:
        return self.info.n_channels

    @property
    def num_classes(self) -> int:
        return self.view.num_classes

    @property
    def size(self) -> int:
        return self.config.size

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images in [0, 1]."""
        x = self.train.images.float().div_(255)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()

    def describe(self) -> dict:
        """A JSON-able summary recorded with every run."""
        counts = {s: np.bincount(self.splits[s].labels.numpy(), minlength=self.num_classes).tolist()
                  for s in SPLITS}
        return {
            "dataset": self.info.flag, "size": self.size, "task": self.info.task,
            "view": self.view.to_dict(), "file": str(self.path), "md5": self.md5,
            "n_samples": {s: len(self.splits[s]) for s in SPLITS}, "class_counts": counts,
        }


def _subset(split: Split, limit: int | None, seed: int) -> Split:
    if limit is None or limit >= len(split):
        return split
    if limit <= 0:
        raise DataError(f"A sample limit must be positive, got {limit}.")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(split), size=limit, replace=False))
    t = torch.from_numpy(keep)
    return Split(split.name, split.images[t].contiguous(), split.labels[t].contiguous(),
                 split.native_labels[keep], split.source_index[keep])


def load_dataset(config: DataConfig | None = None, *, seed: int = 0, **overrides) -> MedDataset:
    """Load a MedMNIST 2D dataset into memory under a task view.

    Args:
        config: What to load; keyword ``overrides`` replace its fields
            (``load_dataset(dataset="breastmnist", view="binary")``).
        seed: Seeds the choice of subsets when ``train_limit``/``eval_limit`` are set.

    Raises:
        DataError: unknown dataset, missing/corrupt/wrong-checksum file, bad view.
    """
    import dataclasses

    config = dataclasses.replace(config or DataConfig(), **overrides)
    info = get_info(config.dataset)
    config = dataclasses.replace(config, dataset=info.flag)
    if config.augment not in POLICIES:
        raise DataError(f"Unknown augmentation {config.augment!r}; choose one of {POLICIES}.")
    view = resolve_view(info, config.view, config.positive_classes)
    config = dataclasses.replace(config, view=view.kind, positive_classes=view.positive_classes)
    path = locate(info, config.size, config.data_root, download=config.download)
    md5 = verify_md5(path, info.md5[config.size]) if config.verify_md5 else None
    raw = read_npz(path, info, config.size)
    splits = {}
    for name in SPLITS:
        r = raw[name]
        imgs = r.images if r.images.ndim == 4 else r.images[..., None]  # (N, H, W, C)
        images = torch.from_numpy(np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)))
        labels = torch.from_numpy(view.apply(r.labels, info.multilabel))
        split = Split(name, images, labels, r.labels, np.arange(len(labels)))
        limit = config.train_limit if name == "train" else config.eval_limit
        splits[name] = _subset(split, limit, seed + SPLITS.index(name))
    return MedDataset(info, config, view, path, md5, splits)


def iterate_batches(split: Split, indices: torch.Tensor | None = None, *, batch_size: int = 256,
                    shuffle: bool = False, generator: torch.Generator | None = None,
                    augment: str = "none", drop_last: bool = False,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels, indices)`` batches from a split.

    Images come out as float in [0, 1], shape (B, C, H, W), augmented by ``augment``; the model
    normalises them itself. ``indices`` selects a subset (e.g. a forget or retain set).
    """
    idx = (torch.arange(len(split)) if indices is None
           else torch.as_tensor(indices, dtype=torch.long))
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs an explicit generator for reproducibility")
        idx = idx[torch.randperm(len(idx), generator=generator)]
    n = len(idx)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        b = idx[start:start + batch_size]
        x = split.images[b].float().div_(255)
        if augment != "none":
            x = augment_batch(x, augment, generator)
        yield x, split.labels[b], b

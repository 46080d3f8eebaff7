"""Synthetic MedMNIST-format files for tests and offline demos.

MedMNIST datasets other than the bundled ones cannot be downloaded on an offline machine, so tests
exercise those code paths with small files of the same layout (``{split}_images`` uint8
(N, H, W[, C]), ``{split}_labels`` uint8 (N, 1) or (N, L) for multi-label) whose classes are
learnable: each class has its own mean brightness pattern plus noise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def synthetic_arrays(n: int, *, n_classes: int, n_channels: int = 1, size: int = 28,
                     multilabel: bool = False, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """``(images, labels)`` of ``n`` synthetic samples with a class-dependent signal."""
    protos = np.random.default_rng(1234).uniform(40, 215, size=(n_classes, size, size, n_channels))
    if multilabel:
        labels = (rng.random((n, n_classes)) < 0.3).astype(np.uint8)
        base = (labels[:, :, None, None, None] * protos[None]).sum(1) / np.maximum(
            labels.sum(1), 1)[:, None, None, None]
    else:
        y = rng.integers(0, n_classes, size=n)
        labels = y[:, None].astype(np.uint8)
        base = protos[y]
    imgs = np.clip(base + rng.normal(0, 35, size=base.shape), 0, 255).astype(np.uint8)
    if n_channels == 1:
        imgs = imgs[..., 0]
    return imgs, labels


def make_synthetic_npz(path: str | os.PathLike, *, n_classes: int, n_channels: int = 1,
                       size: int = 28, n_train: int = 120, n_val: int = 40, n_test: int = 40,
                       multilabel: bool = False, seed: int = 0) -> Path:
    """Write a small synthetic dataset in MedMNIST's npz layout and return its path."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        imgs, labels = synthetic_arrays(n, n_classes=n_classes, n_channels=n_channels, size=size,
                                        multilabel=multilabel, rng=rng)
        arrays[f"{split}_images"] = imgs
        arrays[f"{split}_labels"] = labels
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path

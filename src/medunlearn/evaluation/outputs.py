"""Model outputs computed once per model: logits and penultimate features of every split.

All metric functions take these arrays; nothing downstream runs the network again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medunlearn.data import MedDataset, Split, iterate_batches
from medunlearn.evaluation.utility import softmax


@dataclass
class Outputs:
    """Logits ``(N, K)``, probabilities and features ``(N, D)`` of one model on one sample set."""

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray

    @property
    def probs(self) -> np.ndarray:
        return softmax(self.logits)

    def subset(self, idx: np.ndarray) -> Outputs:
        return Outputs(self.logits[idx], self.features[idx], self.labels[idx])

    def __len__(self) -> int:
        return len(self.labels)


@torch.no_grad()
def split_outputs(model: torch.nn.Module, split: Split, indices: np.ndarray | None = None, *,
                  batch_size: int = 512) -> Outputs:
    """Logits and ``model.features`` of the samples of ``split`` (or its ``indices`` subset, in
    that order), in eval mode."""
    was_training = model.training
    model.eval()
    model.to(memory_format=torch.channels_last)  # faster CPU convolutions; same numbers
    logits, feats = [], []
    idx = None if indices is None else torch.as_tensor(np.asarray(indices), dtype=torch.long)
    for x, _, _ in iterate_batches(split, idx, batch_size=batch_size):
        f = model.features(x.contiguous(memory_format=torch.channels_last))  # (B, D)
        feats.append(f)
        logits.append(model.head(f))  # (B, K)
    model.to(memory_format=torch.contiguous_format)
    model.train(was_training)
    k = model.head.out_features
    d = model.head.in_features
    lo = torch.cat(logits).numpy() if logits else np.zeros((0, k), np.float32)
    fe = torch.cat(feats).numpy() if feats else np.zeros((0, d), np.float32)
    labels = split.labels.numpy()
    return Outputs(lo, fe, labels if indices is None else labels[np.asarray(indices)])


def model_outputs(model: torch.nn.Module, dataset: MedDataset, *, forget: np.ndarray,
                  retain: np.ndarray, batch_size: int = 512) -> dict[str, Outputs]:
    """``forget``, ``retain``, ``val`` and ``test`` outputs of ``model`` (each sample once)."""
    forget = np.asarray(forget)
    retain = np.asarray(retain)
    train = split_outputs(model, dataset.train, np.concatenate([forget, retain]),
                          batch_size=batch_size)
    n_f = len(forget)
    return {
        "forget": train.subset(np.arange(n_f)),
        "retain": train.subset(np.arange(n_f, n_f + len(retain))),
        "val": split_outputs(model, dataset.val, batch_size=batch_size),
        "test": split_outputs(model, dataset.test, batch_size=batch_size),
    }

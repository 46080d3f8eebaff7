"""Model outputs computed once per model: logits and penultimate features of every split.

All metric functions take these arrays; nothing downstream runs the network again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medunlearn.data import Dataset, Split
from medunlearn.evaluation.utility import softmax
from medunlearn.loop import CPU_FP32, Runtime, infer


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


def split_outputs(model: torch.nn.Module, split: Split, indices: np.ndarray | None = None, *,
                  batch_size: int = 512, runtime: Runtime = CPU_FP32) -> Outputs:
    """Logits and penultimate features of the samples of ``split`` (or its ``indices`` subset,
    in that order), in eval mode (:func:`medunlearn.loop.infer`)."""
    lo, fe = infer(model, split, indices, runtime=runtime, batch_size=batch_size, features=True)
    labels = split.labels.numpy()
    return Outputs(lo, fe, labels if indices is None else labels[np.asarray(indices)])


def model_outputs(model: torch.nn.Module, dataset: Dataset, *, forget: np.ndarray,
                  retain: np.ndarray, batch_size: int = 512,
                  runtime: Runtime = CPU_FP32) -> dict[str, Outputs]:
    """``forget``, ``retain``, ``val`` and ``test`` outputs of ``model`` (each sample once)."""
    forget = np.asarray(forget, dtype=np.int64)
    retain = np.asarray(retain, dtype=np.int64)
    kw = {"batch_size": batch_size, "runtime": runtime}
    train = split_outputs(model, dataset.train, np.concatenate([forget, retain]), **kw)
    n_f = len(forget)
    return {
        "forget": train.subset(np.arange(n_f)),
        "retain": train.subset(np.arange(n_f, n_f + len(retain))),
        "val": split_outputs(model, dataset.val, **kw),
        "test": split_outputs(model, dataset.test, **kw),
    }

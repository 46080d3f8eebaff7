"""Model outputs computed once per model: logits and penultimate features of every split.

All metric functions take these arrays; nothing downstream runs the network again. Every
function here reads the network through :func:`medunlearn.loop.infer`, so a feature cache given
as ``cache`` (a :class:`medunlearn.cache.Session`) serves images it has seen through the same
backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medunlearn.data import Dataset, Split
from medunlearn.evaluation.privacy import logit_confidence
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
                  batch_size: int = 512, runtime: Runtime = CPU_FP32, cache=None) -> Outputs:
    """Logits and penultimate features of the samples of ``split`` (or its ``indices`` subset,
    in that order), in eval mode (:func:`medunlearn.loop.infer`)."""
    lo, fe = infer(model, split, indices, runtime=runtime, batch_size=batch_size, features=True,
                   cache=cache)
    labels = split.labels.numpy()
    return Outputs(lo, fe, labels if indices is None else labels[np.asarray(indices)])


def model_outputs(model: torch.nn.Module, dataset: Dataset, *, forget: np.ndarray,
                  retain: np.ndarray, batch_size: int = 512,
                  runtime: Runtime = CPU_FP32, cache=None) -> dict[str, Outputs]:
    """``forget``, ``retain``, ``val`` and ``test`` outputs of ``model`` (each sample once)."""
    forget = np.asarray(forget, dtype=np.int64)
    retain = np.asarray(retain, dtype=np.int64)
    kw = {"batch_size": batch_size, "runtime": runtime, "cache": cache}
    train = split_outputs(model, dataset.train, np.concatenate([forget, retain]), **kw)
    n_f = len(forget)
    return {
        "forget": train.subset(np.arange(n_f)),
        "retain": train.subset(np.arange(n_f, n_f + len(retain))),
        "val": split_outputs(model, dataset.val, **kw),
        "test": split_outputs(model, dataset.test, **kw),
    }


def forget_confidences(model: torch.nn.Module, split: Split, forget: np.ndarray, *,
                       runtime: Runtime = CPU_FP32, cache=None) -> np.ndarray:
    """Logit-scaled true-class confidences ``(F,)`` of ``model`` on training samples ``forget``
    (the per-example forgetting-quality score, :mod:`.forgetting_quality`)."""
    logits, _ = infer(model, split, np.asarray(forget), runtime=runtime, cache=cache)
    labels = split.labels.numpy()[np.asarray(forget)]
    return logit_confidence(softmax(logits), labels)


def accuracy(model: torch.nn.Module, split: Split, indices=None, *,
             runtime: Runtime = CPU_FP32, cache=None) -> float:
    """Accuracy of ``model`` on a split or its ``indices`` subset (multi-label views: per-label
    accuracy at 0.5; nan for an empty subset)."""
    logits, _ = infer(model, split, indices, runtime=runtime, cache=cache)
    labels = split.labels.numpy()
    if indices is not None:
        labels = labels[np.asarray(indices)]
    if labels.ndim > 1:
        return float(((logits > 0) == (labels > 0.5)).mean())
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")


def score_models(models: Sequence[torch.nn.Module], data: Dataset, forget: np.ndarray,
                 retain: np.ndarray | None = None, *, runtime: Runtime = CPU_FP32) -> dict:
    """Forget-set confidences ``(N, F)`` and retain/test accuracies of in-memory models.

    ``retain`` (training indices) gives the RA list; without it RA is not computed.
    """
    conf, ra, ta = [], [], []
    for m in models:
        conf.append(forget_confidences(m, data.train, forget, runtime=runtime))
        if retain is not None:
            ra.append(accuracy(m, data.train, retain, runtime=runtime))
        ta.append(accuracy(m, data.test, None, runtime=runtime))
    return {"scores": np.stack(conf), "RA": ra, "TA": ta}

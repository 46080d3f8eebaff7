"""Shadow models for the offline LiRA attack (optional, for benchmark runs).

K shadow models are trained with the original recipe on random halves of the retain set, so
none of them sees a forget or test sample: each gives "not trained on" confidences for every
forget and test sample. :func:`medunlearn.evaluation.privacy.lira_offline_scores` turns them into
membership scores for any evaluated model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from medunlearn.config import ModelConfig, TrainConfig
from medunlearn.data import MedDataset
from medunlearn.evaluation.outputs import split_outputs
from medunlearn.evaluation.privacy import logit_confidence
from medunlearn.evaluation.utility import softmax


def shadow_confidences(dataset: MedDataset, *, model_config: ModelConfig,
                       train_config: TrainConfig, retain: np.ndarray, forget: np.ndarray,
                       shadows: int, seed: int = 0, epochs: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train ``shadows`` models (``model_config`` with the ``train_config`` recipe, ``epochs``
    overriding its epochs) on random halves of ``retain`` and return their logit-scaled
    true-class confidences on the forget set ``(K, F)`` and the test set ``(K, T)``, plus a small
    description (seconds, epochs).
    """
    import time

    from medunlearn.training import train_model

    model_cfg = model_config
    train_cfg = dataclasses.replace(train_config, progress=False,
                                    epochs=epochs if epochs else train_config.epochs)
    rng = np.random.default_rng(seed + 7919)
    f_out, t_out = [], []
    t0 = time.perf_counter()
    for k in range(shadows):
        half = np.sort(rng.choice(retain, size=max(1, len(retain) // 2), replace=False))
        fit, _ = train_model(dataset, model_cfg, train_cfg, seed=seed * 1000 + 17 + k,
                             train_indices=torch.as_tensor(half), desc=f"shadow {k + 1}")
        train = split_outputs(fit.model, dataset.train)
        test = split_outputs(fit.model, dataset.test)
        f_out.append(logit_confidence(softmax(train.logits[forget]), train.labels[forget]))
        t_out.append(logit_confidence(softmax(test.logits), test.labels))
    info = {"shadows": shadows, "epochs": train_cfg.epochs,
            "seconds": time.perf_counter() - t0, "pool": "random halves of the retain set"}
    return np.stack(f_out), np.stack(t_out), info

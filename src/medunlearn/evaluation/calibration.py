"""Calibration of predicted probabilities."""

from __future__ import annotations

import numpy as np


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins on [0, 1].

    ``ECE = sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)|`` where the confidence is the arg-max
    probability and bin ``b`` holds confidences in ``((b-1)/n_bins, b/n_bins]`` (the first bin
    includes 0). Lower is better; ``nan`` for no samples.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}.")
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if len(y) == 0:
        return float("nan")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / len(y))

"""Run-time efficiency of the unlearning step, read from run folders' ``metrics.json``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _num(d: Mapping | None, key: str) -> float | None:
    if not d or d.get(key) is None:
        return None
    try:
        return float(d[key])
    except (TypeError, ValueError):
        return None


def efficiency(unlearn_metrics: Mapping | None, reference_metrics: Mapping | None = None) -> dict:
    """Wall time, CPU time and peak memory of the unlearning step, and the run-time efficiency.

    Args:
        unlearn_metrics: The unlearn run's ``metrics.json`` (``unlearn_seconds``,
            ``cpu_seconds``, ``peak_memory_mb``).
        reference_metrics: The retrained reference run's ``metrics.json``; its
            ``unlearn_seconds`` (retraining time of the same forget set) or, for a plain training
            run, ``train_seconds``.

    Returns:
        ``unlearn_seconds``, ``cpu_seconds``, ``peak_memory_mb`` (lower is better),
        ``retrain_seconds``, ``rte_ratio`` = unlearn / retrain wall time (lower is better; SalUn
        reports ~0.06 on CIFAR-10) and ``speedup`` = retrain / unlearn (higher is better).
        Missing values are ``None``.
    """
    wall = _num(unlearn_metrics, "unlearn_seconds")
    ref = _num(reference_metrics, "unlearn_seconds")
    source = "unlearn_seconds"
    if ref is None:
        ref = _num(reference_metrics, "train_seconds")
        source = "train_seconds" if ref is not None else None
    ok = wall is not None and ref is not None and np.isfinite(wall) and np.isfinite(ref)
    return {
        "unlearn_seconds": wall,
        "cpu_seconds": _num(unlearn_metrics, "cpu_seconds"),
        "peak_memory_mb": _num(unlearn_metrics, "peak_memory_mb"),
        "retrain_seconds": ref,
        "retrain_seconds_source": source,
        "rte_ratio": wall / ref if ok and ref > 0 else None,
        "speedup": ref / wall if ok and wall > 0 else None,
    }

"""Fidelity to the retrained reference: does the unlearned model behave like one that never saw
the forget set?
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

GAP_KEYS = ("UA", "RA", "TA", "mia_efficacy")


def average_gap(model: Mapping[str, float], reference: Mapping[str, float],
                keys: Sequence[str] = GAP_KEYS) -> float:
    """SalUn's average gap, in **percentage points**: ``100 * mean_k |model[k] - reference[k]|``
    over UA, RA, TA and MIA-efficacy (each a fraction in [0, 1]). Lower is better; ``nan`` if a
    value is missing or not finite.
    """
    diffs = []
    for k in keys:
        a, b = model.get(k), reference.get(k)
        if a is None or b is None or not (np.isfinite(a) and np.isfinite(b)):
            return float("nan")
        diffs.append(abs(float(a) - float(b)))
    return float(100.0 * np.mean(diffs))


def prediction_agreement(probs_a: np.ndarray, probs_b: np.ndarray) -> float:
    """Fraction of samples whose arg-max class is the same under both models. Higher is better
    (when ``b`` is the retrained reference)."""
    a = np.asarray(probs_a)
    b = np.asarray(probs_b)
    if len(a) == 0:
        return float("nan")
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean())


def mean_kl(p_reference: np.ndarray, p_model: np.ndarray, eps: float = 1e-12) -> float:
    """Mean over samples of ``KL(p_reference || p_model) = sum_k p_ref,k log(p_ref,k / p_model,k)``
    in nats (the reference, i.e. the retrained model, is the "true" distribution). Lower is better.
    """
    p = np.clip(np.asarray(p_reference, dtype=np.float64), eps, 1.0)
    q = np.clip(np.asarray(p_model, dtype=np.float64), eps, 1.0)
    if len(p) == 0:
        return float("nan")
    return float((p * (np.log(p) - np.log(q))).sum(axis=1).mean())

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


def forget_shift(phi: np.ndarray, phi_original: np.ndarray) -> float:
    """How far a model moved from the original on the forget set: the mean absolute change of
    the logit-scaled true-class confidence (``evaluation.privacy.logit_confidence``, LiRA's
    scale, where a confident training image does not saturate at probability 1), per image.
    0 for the original itself. Compared with the retrained reference's own shift it says
    whether a method did anything an observer holding the original could see
    (:func:`medunlearn.tuning.rejects_as_do_nothing`)."""
    a, b = np.asarray(phi, dtype=np.float64), np.asarray(phi_original, dtype=np.float64)
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(f"forget_shift needs two equal, non-empty arrays ({a.shape}, {b.shape})")
    return float(np.abs(a - b).mean())


def tuning_closeness(*, val_labels: np.ndarray, forget_labels: np.ndarray,
                     val_pred: np.ndarray, forget_pred: np.ndarray, forget_prob: np.ndarray,
                     ref_val_pred: np.ndarray, ref_forget_pred: np.ndarray,
                     ref_forget_prob: np.ndarray) -> dict[str, float]:
    """How close an unlearned model is to the retrained reference on data a tuner may use
    (validation and forget samples, never the test split).

    ``*_pred`` are arg-max classes, ``*_prob`` the probability given to the true class of each
    forget sample. Returns ``forget_accuracy``, ``val_accuracy``, ``agreement`` (share of
    validation + forget samples predicted alike) and ``forget_prob_w1`` (Wasserstein-1 distance
    between the two models' true-class probabilities on the forget set: a membership signal that
    accuracy does not see), and ``score``: the mean of |forget accuracy - reference's|,
    |validation accuracy - reference's|, 1 - agreement and the W1 term. Lower is better; 0 means
    the same predictions and the same confidence distribution as the reference.
    """
    from scipy.stats import wasserstein_distance

    val_labels, forget_labels = np.asarray(val_labels), np.asarray(forget_labels)
    val_pred, forget_pred = np.asarray(val_pred), np.asarray(forget_pred)
    ref_val_pred, ref_forget_pred = np.asarray(ref_val_pred), np.asarray(ref_forget_pred)
    if len(val_labels) == 0 or len(forget_labels) == 0:
        raise ValueError("tuning_closeness needs at least one validation and one forget sample.")
    val_acc = float((val_pred == val_labels).mean())
    forget_acc = float((forget_pred == forget_labels).mean())
    agree = float(((val_pred == ref_val_pred).sum() + (forget_pred == ref_forget_pred).sum())
                  / (len(val_pred) + len(forget_pred)))
    w1 = float(wasserstein_distance(np.asarray(forget_prob), np.asarray(ref_forget_prob)))
    score = (abs(forget_acc - float((ref_forget_pred == forget_labels).mean()))
             + abs(val_acc - float((ref_val_pred == val_labels).mean())) + (1 - agree) + w1) / 4
    return {"score": score, "forget_accuracy": forget_acc, "val_accuracy": val_acc,
            "agreement": agree, "forget_prob_w1": w1}

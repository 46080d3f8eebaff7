"""Clinical error metrics: what a missed disease costs.

A model is viewed as a disease detector. For a binary view the positive label is 1 (disease);
for a multi-class model a set of *positive labels* is given (``dataset.view.positive_labels``,
e.g. DermaMNIST's malignant classes) and a sample is *predicted positive* when the arg-max class is
in that set (so confusion between two malignant classes is not a clinical error).

Global Risk (SalUn-CRA) = ``(c_FN * FN + c_FP * FP) / N``.

Default costs ``c_FN = 5``, ``c_FP = 1``: a false negative (a missed pneumonia or cancer) delays
treatment and can be fatal, whereas a false positive costs a follow-up test or biopsy. A 5:1 ratio
is a common conservative choice in screening decision analysis (it corresponds to an operating
threshold of ``c_FP / (c_FN + c_FP) = 1/6`` on the disease probability) and makes one missed
disease as costly as five false alarms. Both costs are configurable (``--c-fn``, ``--c-fp``);
compare models only at equal costs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medunlearn.errors import ConfigError

DEFAULT_C_FN = 5.0
DEFAULT_C_FP = 1.0


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def predicted_positive(probs: np.ndarray, positive_labels: Sequence[int]) -> np.ndarray:
    """Boolean ``(N,)``: the arg-max class of each row of ``probs`` (N, K) is a positive label."""
    probs = np.asarray(probs)
    pos = np.asarray(list(positive_labels), dtype=np.int64)
    if pos.size == 0:
        raise ConfigError("Clinical metrics need at least one positive (disease) class.")
    if pos.min() < 0 or pos.max() >= probs.shape[1]:
        raise ConfigError(f"Positive classes {pos.tolist()} are out of range for a model with "
                          f"{probs.shape[1]} classes.")
    return np.isin(probs.argmax(axis=1), pos)


def confusion_counts(pred_pos: np.ndarray, true_pos: np.ndarray) -> dict:
    """``tp``, ``fp``, ``tn``, ``fn`` of boolean predictions against boolean truth."""
    p = np.asarray(pred_pos, dtype=bool)
    t = np.asarray(true_pos, dtype=bool)
    return {"tp": int((p & t).sum()), "fp": int((p & ~t).sum()),
            "tn": int((~p & ~t).sum()), "fn": int((~p & t).sum())}


def global_risk(*, fn: int, fp: int, n: int, c_fn: float = DEFAULT_C_FN,
                c_fp: float = DEFAULT_C_FP) -> float:
    """Global Risk ``(c_FN * FN + c_FP * FP) / N`` (expected cost per patient). Lower is better."""
    if c_fn < 0 or c_fp < 0:
        raise ConfigError(f"Error costs must be non-negative, got c_FN={c_fn}, c_FP={c_fp}.")
    return float((c_fn * fn + c_fp * fp) / n) if n > 0 else float("nan")


def clinical_metrics(probs: np.ndarray, labels: np.ndarray, positive_labels: Sequence[int], *,
                     c_fn: float = DEFAULT_C_FN, c_fp: float = DEFAULT_C_FP) -> dict:
    """Confusion-matrix metrics of the disease-vs-no-disease decision.

    Args:
        probs: Class probabilities (N, K).
        labels: True labels (N,) in the model's label space.
        positive_labels: Labels meaning disease.
        c_fn: Cost of a false negative (missed disease).
        c_fp: Cost of a false positive (false alarm).

    Returns:
        ``sensitivity`` = TP/(TP+FN) (higher better), ``specificity`` = TN/(TN+FP) (higher),
        ``fnr`` = FN/(TP+FN) (lower), ``fpr`` = FP/(FP+TN) (lower), ``ppv`` = TP/(TP+FP)
        (higher), ``npv`` = TN/(TN+FN) (higher), ``global_risk`` (lower), the counts and ``n``.
        A ratio whose denominator is zero is ``nan`` (e.g. FNR on a forget set without
        positives).
    """
    pred = predicted_positive(probs, positive_labels)
    true = np.isin(np.asarray(labels), np.asarray(list(positive_labels)))
    c = confusion_counts(pred, true)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    n = tp + fp + tn + fn
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "fnr": _ratio(fn, tp + fn),
        "fpr": _ratio(fp, fp + tn),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "global_risk": global_risk(fn=fn, fp=fp, n=n, c_fn=c_fn, c_fp=c_fp),
        **c,
        "n": n,
    }

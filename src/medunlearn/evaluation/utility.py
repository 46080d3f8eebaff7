"""Utility metrics of a classifier's predictions.

Every function is pure: it takes arrays and returns numbers. Probabilities are softmax outputs
``(N, K)``; labels are integers ``(N,)``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import recall_score, roc_auc_score


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of ``logits`` (N, K), or (..., K), computed stably in
    float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose arg-max class equals the label. Higher is better."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    return float((np.asarray(probs).argmax(axis=1) == labels).mean())


def auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC: binary uses the class-1 probability; multi-class is one-vs-rest, macro-averaged
    over the classes present. ``nan`` when fewer than two classes are present. Higher is better.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    if len(present) < probs.shape[1]:  # sklearn's multi-class AUC needs every class present
        scores = [roc_auc_score(labels == k, probs[:, k]) for k in present]
        return float(np.mean(scores))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def per_class_recall(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """Recall of each class (``nan`` for a class absent from ``labels``). Higher is better."""
    k = np.asarray(probs).shape[1]
    pred = np.asarray(probs).argmax(axis=1)
    labels = np.asarray(labels)
    out = recall_score(labels, pred, labels=list(range(k)), average=None, zero_division=np.nan)
    return [float(v) for v in out]


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels. Lower is better."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean()) if len(labels) else float("nan")


def summarize(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, AUC, loss and per-class recall in one dict."""
    return {
        "accuracy": accuracy(probs, labels),
        "auc": auc(probs, labels),
        "loss": cross_entropy(probs, labels),
        "per_class_recall": per_class_recall(probs, labels),
        "n": int(len(labels)),
    }


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean recall over the classes present in ``labels`` (as scikit-learn's
    ``balanced_accuracy_score``); ``nan`` for no samples. Higher is better.
    """
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    pred = np.asarray(probs).argmax(axis=1)
    recalls = [float((pred[labels == k] == k).mean()) for k in np.unique(labels)]
    return float(np.mean(recalls))


def unlearning_accuracy(forget_probs: np.ndarray, forget_labels: np.ndarray) -> float:
    """UA = 1 - accuracy on the forget set.

    Direction: closer to the retrained reference is better (a UA above the reference's means the
    model "over-forgets", which is itself a membership signal).
    """
    acc = accuracy(forget_probs, forget_labels)
    return 1.0 - acc if np.isfinite(acc) else float("nan")


def unlearning_utility(*, forget_probs: np.ndarray, forget_labels: np.ndarray,
                       retain_probs: np.ndarray, retain_labels: np.ndarray,
                       test_probs: np.ndarray, test_labels: np.ndarray,
                       val_probs: np.ndarray | None = None,
                       val_labels: np.ndarray | None = None) -> dict:
    """UA, RA, TA (fractions in [0, 1]), validation accuracy, test AUC, balanced accuracy and
    per-class recall on the test set, plus the forget-set loss.

    Directions: UA and forget loss closer-to-reference; RA, TA, val accuracy, test AUC, balanced
    accuracy and recall higher-is-better (see ``directions.DIRECTIONS``).
    """
    out = {
        "UA": unlearning_accuracy(forget_probs, forget_labels),
        "RA": accuracy(retain_probs, retain_labels),
        "TA": accuracy(test_probs, test_labels),
        "val_accuracy": accuracy(val_probs, val_labels) if val_probs is not None else None,
        "test_auc": auc(test_probs, test_labels),
        "balanced_accuracy": balanced_accuracy(test_probs, test_labels),
        "per_class_recall": per_class_recall(test_probs, test_labels),
        "forget_accuracy": accuracy(forget_probs, forget_labels),
        "forget_loss": cross_entropy(forget_probs, forget_labels),
        "majority_prediction_share": majority_prediction_share(test_probs),
    }
    return out


#: A model is degenerate when it predicts one class for at least this share of the test images
#: or when its balanced accuracy is below :data:`DEGENERATE_BALANCED_ACCURACY`: methods must not
#: be ranked against such an original or retrained reference (reports flag it instead).
DEGENERATE_SHARE = 0.95
DEGENERATE_BALANCED_ACCURACY = 0.6


def majority_prediction_share(probs: np.ndarray) -> float:
    """Share of samples predicted as the most predicted class (1.0: one class for everyone)."""
    probs = np.asarray(probs)
    if len(probs) == 0:
        return float("nan")
    counts = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
    return float(counts.max() / len(probs))


def degenerate_reason(balanced_accuracy: float | None, majority_share: float | None
                      ) -> str | None:
    """Why a model counts as degenerate (see :data:`DEGENERATE_SHARE`), or None."""
    why = []
    if majority_share is not None and np.isfinite(majority_share) \
            and majority_share >= DEGENERATE_SHARE:
        why.append(f"predicts one class for {majority_share:.0%} of the test images")
    if balanced_accuracy is not None and np.isfinite(balanced_accuracy) \
            and balanced_accuracy < DEGENERATE_BALANCED_ACCURACY:
        why.append(f"has balanced accuracy {balanced_accuracy:.2f} (< "
                   f"{DEGENERATE_BALANCED_ACCURACY:g})")
    return "; ".join(why) or None

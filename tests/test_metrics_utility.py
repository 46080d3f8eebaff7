"""Utility metrics (UA/RA/TA, balanced accuracy) against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from medunlearn.evaluation.utility import (
    balanced_accuracy,
    softmax,
    unlearning_accuracy,
    unlearning_utility,
)


def _probs(rng, n, k):
    return softmax(rng.normal(size=(n, k)) * 2)


@pytest.mark.parametrize("k", [2, 5])
def test_balanced_accuracy_matches_sklearn(k):
    rng = np.random.default_rng(k)
    p = _probs(rng, 300, k)
    y = rng.integers(0, k, 300)
    assert balanced_accuracy(p, y) == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))


def test_ua_ra_ta():
    rng = np.random.default_rng(0)
    pf, pr, pt = _probs(rng, 50, 3), _probs(rng, 80, 3), _probs(rng, 60, 3)
    yf, yr, yt = rng.integers(0, 3, 50), rng.integers(0, 3, 80), rng.integers(0, 3, 60)
    u = unlearning_utility(forget_probs=pf, forget_labels=yf, retain_probs=pr, retain_labels=yr,
                           test_probs=pt, test_labels=yt)
    assert u["UA"] == pytest.approx(1 - accuracy_score(yf, pf.argmax(1)))
    assert u["RA"] == pytest.approx(accuracy_score(yr, pr.argmax(1)))
    assert u["TA"] == pytest.approx(accuracy_score(yt, pt.argmax(1)))
    assert u["val_accuracy"] is None
    assert np.isnan(unlearning_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)))

"""ECE against a hand loop; fidelity and efficiency against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import entropy

from medunlearn.evaluation.calibration import expected_calibration_error
from medunlearn.evaluation.efficiency import efficiency
from medunlearn.evaluation.fidelity import (
    average_gap,
    mean_kl,
    prediction_agreement,
    tuning_closeness,
)
from medunlearn.evaluation.utility import softmax


def _ece_loop(p, y, n_bins):
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        m = (conf > lo) & (conf <= hi) if b > 0 else (conf >= 0) & (conf <= hi)
        if m.any():
            total += m.sum() / len(y) * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return total


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_loop(n_bins):
    rng = np.random.default_rng(n_bins)
    p = softmax(rng.normal(size=(1000, 4)) * 3)
    y = rng.integers(0, 4, 1000)
    assert expected_calibration_error(p, y, n_bins=n_bins) == pytest.approx(
        _ece_loop(p, y, n_bins), abs=1e-12)


def test_ece_perfect_and_edge():
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(p, np.array([0, 1])) == 0.0
    assert expected_calibration_error(p, np.array([1, 0])) == pytest.approx(1.0)
    assert np.isnan(expected_calibration_error(np.zeros((0, 2)), np.zeros(0, int)))


def test_fidelity():
    rng = np.random.default_rng(0)
    a, b = softmax(rng.normal(size=(200, 3))), softmax(rng.normal(size=(200, 3)))
    assert prediction_agreement(a, b) == pytest.approx((a.argmax(1) == b.argmax(1)).mean())
    assert mean_kl(b, a) == pytest.approx(np.mean([entropy(b[i], a[i]) for i in range(200)]))
    assert mean_kl(a, a) == pytest.approx(0.0, abs=1e-12)
    m = {"UA": 0.10, "RA": 0.99, "TA": 0.85, "mia_efficacy": 0.20}
    r = {"UA": 0.14, "RA": 0.97, "TA": 0.86, "mia_efficacy": 0.25}
    assert average_gap(m, r) == pytest.approx(100 * (0.04 + 0.02 + 0.01 + 0.05) / 4)
    assert np.isnan(average_gap(m, {"UA": 0.1}))


def test_tuning_closeness_by_hand():
    vl, fl = np.array([0, 1, 1, 0]), np.array([1, 1, 0])
    ref = {"ref_val_pred": np.array([0, 1, 0, 0]), "ref_forget_pred": np.array([1, 0, 0]),
           "ref_forget_prob": np.array([0.9, 0.4, 0.7])}
    same = tuning_closeness(val_labels=vl, forget_labels=fl, val_pred=ref["ref_val_pred"],
                            forget_pred=ref["ref_forget_pred"], forget_prob=ref["ref_forget_prob"],
                            **ref)
    assert same["score"] == 0.0 and same["agreement"] == 1.0 and same["val_accuracy"] == 0.75
    # all validation right (acc 1 vs 0.75), forget all right (1 vs 2/3), 2 of 7 predictions
    # differ, every true-class probability 0.1 higher (W1 = 0.1)
    got = tuning_closeness(val_labels=vl, forget_labels=fl, val_pred=vl, forget_pred=fl,
                           forget_prob=ref["ref_forget_prob"] + 0.1, **ref)
    assert got["agreement"] == pytest.approx(5 / 7)
    assert got["forget_prob_w1"] == pytest.approx(0.1)
    assert got["score"] == pytest.approx((1 / 3 + 0.25 + 2 / 7 + 0.1) / 4)
    with pytest.raises(ValueError, match="at least one"):
        tuning_closeness(val_labels=vl, forget_labels=fl[:0], val_pred=vl, forget_pred=fl[:0],
                         forget_prob=fl[:0], **ref)


def test_efficiency():
    e = efficiency({"unlearn_seconds": 2.0, "cpu_seconds": 3.5, "peak_memory_mb": 100},
                   {"unlearn_seconds": 40.0})
    assert e["rte_ratio"] == pytest.approx(0.05) and e["speedup"] == pytest.approx(20)
    assert e["retrain_seconds_source"] == "unlearn_seconds"
    e = efficiency({"unlearn_seconds": 2.0}, {"train_seconds": 10.0})
    assert e["retrain_seconds_source"] == "train_seconds" and e["speedup"] == pytest.approx(5)
    e = efficiency({"unlearn_seconds": 2.0}, None)
    assert e["rte_ratio"] is None and e["cpu_seconds"] is None

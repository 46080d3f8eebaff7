"""Clinical metrics against sklearn's confusion matrix and hand-computed Global Risk."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from medunlearn.errors import ConfigError
from medunlearn.evaluation.clinical import clinical_metrics, global_risk, predicted_positive
from medunlearn.evaluation.utility import softmax


def test_binary_matches_confusion_matrix():
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(size=(400, 2)))
    y = rng.integers(0, 2, 400)
    tn, fp, fn, tp = confusion_matrix(y, p.argmax(1), labels=[0, 1]).ravel()
    m = clinical_metrics(p, y, (1,), c_fn=5, c_fp=1)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["fnr"] == pytest.approx(fn / (tp + fn))
    assert m["fpr"] == pytest.approx(fp / (fp + tn))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["global_risk"] == pytest.approx((5 * fn + fp) / 400)


def test_multiclass_positive_set():
    rng = np.random.default_rng(1)
    p = softmax(rng.normal(size=(500, 7)))
    y = rng.integers(0, 7, 500)
    pos = (0, 1, 4)  # DermaMNIST malignant classes
    yb = np.isin(y, pos).astype(int)
    pb = np.isin(p.argmax(1), pos).astype(int)
    tn, fp, fn, tp = confusion_matrix(yb, pb, labels=[0, 1]).ravel()
    m = clinical_metrics(p, y, pos, c_fn=3, c_fp=2)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["global_risk"] == pytest.approx((3 * fn + 2 * fp) / 500)
    # confusing two malignant classes is not a clinical error
    q = np.zeros((1, 7))
    q[0, 1] = 1
    assert clinical_metrics(q, np.array([4]), pos)["fn"] == 0


def test_hand_case_and_degenerate():
    # 3 positives (one missed), 2 negatives (one false alarm)
    p = np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    y = np.array([1, 1, 1, 0, 0])
    m = clinical_metrics(p, y, (1,))
    assert m["fnr"] == pytest.approx(1 / 3)
    assert m["fpr"] == pytest.approx(1 / 2)
    assert m["global_risk"] == pytest.approx((5 * 1 + 1 * 1) / 5)  # default costs 5:1
    none_pos = clinical_metrics(p[3:], y[3:], (1,))
    assert np.isnan(none_pos["fnr"]) and np.isnan(none_pos["sensitivity"])
    with pytest.raises(ConfigError):
        predicted_positive(p, (2,))
    with pytest.raises(ConfigError):
        global_risk(fn=1, fp=0, n=3, c_fn=-1)

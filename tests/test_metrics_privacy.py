"""Membership-inference metrics against scipy/sklearn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import entropy, mannwhitneyu, norm
from sklearn.metrics import roc_auc_score

from medunlearn.evaluation.privacy import (
    attack_auc,
    auc_standard_error,
    lira_offline_scores,
    logit_confidence,
    mia_efficacy,
    mia_feature,
    modified_entropy,
    per_sample_loss,
    prediction_entropy,
    privacy_metrics,
    true_class_confidence,
)
from medunlearn.evaluation.utility import softmax


def test_attack_auc_matches_sklearn_and_mann_whitney():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 1, 120), rng.normal(0, 1, 150)
    y = np.r_[np.ones(120), np.zeros(150)]
    assert attack_auc(a, b) == pytest.approx(roc_auc_score(y, np.r_[a, b]))
    u = mannwhitneyu(a, b).statistic
    assert attack_auc(a, b) == pytest.approx(u / (120 * 150))
    assert np.isnan(attack_auc(a[:0], b))


def test_confidence_features():
    rng = np.random.default_rng(1)
    p = softmax(rng.normal(size=(50, 4)) * 2)
    y = rng.integers(0, 4, 50)
    assert np.allclose(true_class_confidence(p, y), [p[i, y[i]] for i in range(50)])
    assert np.allclose(per_sample_loss(p, y), [-np.log(p[i, y[i]]) for i in range(50)])
    assert np.allclose(prediction_entropy(p), [entropy(row) for row in p])
    hand = []
    for i in range(50):
        s = -(1 - p[i, y[i]]) * np.log(p[i, y[i]])
        s -= sum(p[i, k] * np.log(1 - p[i, k]) for k in range(4) if k != y[i])
        hand.append(s)
    assert np.allclose(modified_entropy(p, y), hand)
    assert np.allclose(logit_confidence(p, y),
                       np.log(true_class_confidence(p, y) / (1 - true_class_confidence(p, y))))
    with pytest.raises(ValueError):
        mia_feature(p, y, "nonsense")


def test_mia_efficacy_separable():
    rng = np.random.default_rng(2)
    members = rng.uniform(0.95, 1.0, (300, 1))
    nonmembers = rng.uniform(0.3, 0.7, (200, 1))
    assert mia_efficacy(member=members, nonmember=nonmembers,
                        target=rng.uniform(0.96, 1.0, (50, 1))) == pytest.approx(0.0)
    assert mia_efficacy(member=members, nonmember=nonmembers,
                        target=rng.uniform(0.35, 0.65, (50, 1))) == pytest.approx(1.0)
    assert mia_efficacy(member=np.ones((5, 1)), nonmember=np.ones((5, 1)),
                        target=np.ones((3, 1))) == 0.5


def test_lira_scores_match_per_sample_gaussians():
    rng = np.random.default_rng(3)
    out = rng.normal(0, 1, (6, 20)) + rng.normal(0, 2, 20)
    target = rng.normal(0, 2, 20)
    s = lira_offline_scores(target, out)
    hand = [norm.cdf(target[i], out[:, i].mean(), out[:, i].std(ddof=1)) for i in range(20)]
    assert np.allclose(s, hand)


def test_auc_standard_error():
    # at AUC 0.5 the Hanley-McNeil variance is (1/4 + (n1 + n2 - 2) / 12) / (n1 n2)
    assert auc_standard_error(0.5, 100, 150) == pytest.approx(
        np.sqrt((0.25 + 248 / 12) / 15000))
    assert np.isnan(auc_standard_error(0.5, 0, 10))


def test_privacy_metrics_member_signal():
    """Members (low loss) are separated; identically distributed sets are not."""
    rng = np.random.default_rng(4)

    def probs(n, conf):
        c = np.clip(rng.normal(conf, 0.05, n), 0.5, 0.999)
        return np.c_[1 - c, c], np.ones(n, dtype=int)

    rp, ry = probs(400, 0.97)
    tp, ty = probs(300, 0.75)
    fp, fy = probs(100, 0.97)
    m = privacy_metrics(forget_probs=fp, forget_labels=fy, retain_probs=rp, retain_labels=ry,
                        test_probs=tp, test_labels=ty)
    assert m["attack_auc"] > 0.95 and m["mia_efficacy"] < 0.1
    fp, fy = probs(100, 0.75)
    m = privacy_metrics(forget_probs=fp, forget_labels=fy, retain_probs=rp, retain_labels=ry,
                        test_probs=tp, test_labels=ty)
    assert abs(m["attack_auc"] - 0.5) < 0.1 and m["mia_efficacy"] > 0.8

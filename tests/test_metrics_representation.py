"""CKA invariances and a kernel-form reference; probe AUC behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from medunlearn.evaluation.representation import linear_cka, probe_auc


def _cka_kernel(x, y):
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.trace(k @ l_) / np.sqrt(np.trace(k @ k) * np.trace(l_ @ l_))


def test_cka_matches_kernel_form_and_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12))
    y = x @ rng.normal(size=(12, 8)) + rng.normal(size=(60, 8))
    assert linear_cka(x, y) == pytest.approx(_cka_kernel(x, y))
    q = ortho_group.rvs(12, random_state=1)
    assert linear_cka(x, x @ q) == pytest.approx(1.0)
    assert linear_cka(x, 3.7 * x + 5.0) == pytest.approx(1.0)  # scale and shift
    assert linear_cka(x, y) == pytest.approx(linear_cka(2 * x @ q, y))
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x))
    assert 0 <= linear_cka(x, rng.normal(size=(60, 5))) < 0.5
    assert np.isnan(linear_cka(np.ones((5, 3)), x[:5]))
    with pytest.raises(ValueError):
        linear_cka(x, x[:10])


def test_probe_auc():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(100, 16)), rng.normal(size=(150, 16))
    assert abs(probe_auc(a, b, seed=0) - 0.5) < 0.12
    shifted = a + np.r_[1.5, np.zeros(15)]
    assert probe_auc(shifted, b, seed=0) > 0.8
    assert np.isnan(probe_auc(a[:3], b))

"""Per-image membership statistics (medunlearn.evaluation.membership) against hand computations,
scipy/numpy references and seeded simulations of the calibration problem."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from medunlearn.evaluation import membership as M
from medunlearn.evaluation.companions import balanced_halves
from medunlearn.evaluation.privacy import lira_offline_scores


def test_member_confidences_is_logit_of_true_class():
    logits = np.array([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [3.0, 1.0]]])  # (K=2, n=2, C=2)
    labels = np.array([0, 1])
    got = M.member_confidences(logits, labels)
    # binary: log p_y - log p_other = logit_y - logit_other
    assert np.allclose(got, [[2.0, 1.0], [0.0, -2.0]])


def test_image_stats_by_hand():
    conf = np.array([[1.0], [2.0], [4.0], [7.0], [3.0], [5.0]])  # K = 6, one image
    member = np.array([[1], [0], [0], [1], [0], [0]], dtype=bool)
    st = M.image_stats(conf, member)
    # OUT shadows 1, 2, 4, 5: values 2, 4, 3, 5
    assert st.mu_out[0] == pytest.approx(3.5) and st.n_out[0] == 4
    assert st.var_out[0] == pytest.approx(np.var([2, 4, 3, 5], ddof=1))
    assert st.mu_in[0] == pytest.approx(4.0) and st.var_in[0] == pytest.approx(18.0)
    assert st.n_in[0] == 2 and st.testable[0]


def test_image_without_in_or_two_out_shadows_is_not_testable():
    conf = np.ones((4, 3))
    member = np.array([[1, 0, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=bool)
    st = M.image_stats(conf, member)
    assert st.testable.tolist() == [False, False, True]  # no OUT / no IN / fine


def test_shrunk_variance_and_pooled_variance():
    assert M.pooled_variance(np.array([1.0, 3.0, np.nan]), np.array([3, 5, 1])) == \
        pytest.approx((2 * 1 + 4 * 3) / 6)
    got = M.shrunk_variance(np.array([4.0, np.nan]), np.array([2, 0]), 1.0, prior=2.0)
    assert got.tolist() == pytest.approx([(2 * 4 + 2 * 1) / 4, 1.0])


def test_features_by_hand():
    st = M.ImageStats(mu_out=np.array([2.0]), var_out=np.array([3.0]), n_out=np.array([5]),
                      mu_in=np.array([4.0]), var_in=np.array([1.0]), n_in=np.array([5]))
    X = M.features(st, M.Globals(var_out=2.0, var_in=1.0))
    spread = (4 * 3.0 + M.VARIANCE_PRIOR * 2.0) / (4 + M.VARIANCE_PRIOR) / 2.0
    lg = np.log(spread)
    assert X[0].tolist() == pytest.approx([1.0, 2.0, lg, 4.0, 2.0 * lg])


def test_fit_out_model_is_least_squares_with_a_log_linear_variance():
    rng = np.random.default_rng(0)
    n = 20000
    X = np.stack([np.ones(n), rng.normal(size=n), rng.normal(size=n)], axis=1)
    sd = np.exp(0.5 * (0.2 + 0.6 * X[:, 2]))
    y = X @ np.array([0.5, 1.7, -0.3]) + rng.normal(size=n) * sd
    fit = M.fit_out_model(X, y)
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    assert fit.beta == pytest.approx(tuple(beta))
    e = y - X @ beta
    bread = np.linalg.inv(X.T @ X)
    cov = bread @ (X.T @ (X * (e ** 2)[:, None])) @ bread * n / (n - 3)
    assert np.allclose(fit.cov, cov)
    assert fit.mean_var(X[:1])[0] == pytest.approx(X[0] @ cov @ X[0])
    # the variance model recovers log Var = 0.2 + 0.6 x2
    assert fit.gamma == pytest.approx((0.2, 0.0, 0.6), abs=0.05)
    assert fit.variance(X[:1])[0] == pytest.approx(sd[0] ** 2, rel=0.1)
    assert M.fit_out_model(X[:5], y[:5]) is None


def test_fit_in_response_is_weighted_least_squares():
    rng = np.random.default_rng(2)
    X = np.stack([np.ones(300), rng.normal(1, 1, 300)], axis=1)
    V = rng.uniform(0.5, 2, 300)
    r = X @ np.array([0.3, 0.8]) + rng.normal(0, 1, 300) * np.sqrt(V)
    fit = M.fit_in_response(X, r, V)
    sw = 1 / np.sqrt(V)
    theta = np.linalg.lstsq(X * sw[:, None], r * sw, rcond=None)[0]
    assert fit.theta == pytest.approx(tuple(theta))
    e = (r - X @ theta) * sw
    assert fit.kappa == pytest.approx((e ** 2).sum() / 298)


def _fold(beta, gamma, theta, kappa, cov=None, theta_cov=None):
    p = len(beta)
    zero = tuple((0.0,) * p for _ in range(p))
    return M.Calibration(M.OutModel(beta=beta, cov=cov or zero, gamma=gamma, n=100),
                         M.InResponse(theta=theta, cov=theta_cov or zero, kappa=kappa, n=100))


def test_membership_test_by_hand():
    """Two folds with different models: each fold's residual is weighted by the other's
    weight; every number checked against its formula."""
    X = np.array([[1.0, 0.5], [1.0, -1.0], [1.0, 2.0]])
    phi = np.array([1.5, -0.2, 3.1])
    a = _fold(beta=(0.2, 1.0), gamma=(0.1, -0.2), theta=(0.4, -0.3), kappa=1.5)
    b = _fold(beta=(0.0, 1.1), gamma=(0.3, 0.0), theta=(0.6, -0.1), kappa=1.1)
    res = M.membership_test(phi, X, np.ones(3, bool), folds=(a, b), alpha=0.05, min_power=0.0)
    x = X[:, 1]
    r_a, r_b = phi - (0.2 + x), phi - 1.1 * x
    v_a, v_b = np.exp(0.1 - 0.2 * x), np.exp(0.3) * np.ones(3)
    m_a, m_b = 0.4 - 0.3 * x, 0.6 - 0.1 * x
    w_a, w_b = m_a / v_a, m_b / v_b
    s = (w_b * r_a + w_a * r_b).sum()
    vbar = (v_a + v_b) / 2
    sd0 = np.sqrt(((w_a + w_b) ** 2 * vbar).sum())
    assert res["z"] == pytest.approx(s / sd0)
    assert res["p_value"] == pytest.approx(norm.sf(s / sd0))
    kappa = (1.5 + 1.1) / 2
    z_mem = ((w_a + w_b) * (m_a + m_b) / 2).sum() / sd0
    assert res["z_if_member"] == pytest.approx(z_mem)
    assert res["sd_ratio"] == pytest.approx(np.sqrt(kappa))
    assert res["power"] == pytest.approx(norm.sf((norm.isf(0.05) - z_mem) / np.sqrt(kappa)))
    img = res["images"]
    z_i = (w_b * r_a + w_a * r_b) / np.sqrt((w_a + w_b) ** 2 * vbar)
    assert np.allclose(img["z"], z_i) and np.allclose(img["p_value"], norm.sf(z_i))
    unseen = phi - (r_a + r_b) / 2
    assert np.allclose(img["expected_if_unseen"], unseen)
    assert np.allclose(img["expected_if_member"], unseen + (m_a + m_b) / 2)
    llr = (norm.logpdf(phi, unseen + (m_a + m_b) / 2, np.sqrt(kappa * vbar))
           - norm.logpdf(phi, unseen, np.sqrt(vbar)))
    assert np.allclose(img["log_lr"], llr) and res["log_lr"] == pytest.approx(llr.sum())
    assert res["status"] == ("fail" if norm.sf(s / sd0) < 0.05 else "pass")
    # one image alone is exactly that image's row
    one = M.membership_test(phi[:1], X[:1], np.ones(1, bool), folds=(a, b), min_power=0.0)
    assert one["z"] == pytest.approx(z_i[0]) and one["power"] == pytest.approx(img["power"][0])


def test_calibration_uncertainty_and_model_offset_widen_the_variance():
    X = np.array([[1.0, 0.0], [1.0, 1.0]])
    phi = np.array([1.0, 2.0])
    ca, cb = ((0.04, 0.0), (0.0, 0.01)), ((0.02, 0.0), (0.0, 0.03))
    a = _fold(beta=(0.0, 1.0), gamma=(0.0, 0.0), theta=(1.0, 0.0), kappa=1.0, cov=ca)
    b = _fold(beta=(0.0, 1.0), gamma=(0.0, 0.0), theta=(1.0, 0.0), kappa=1.0, cov=cb)
    res = M.membership_test(phi, X, np.ones(2, bool), folds=(a, b), offset_var=0.5)
    mv_a = np.einsum("ij,jk,ik->i", X, np.asarray(ca), X)
    mv_b = np.einsum("ij,jk,ik->i", X, np.asarray(cb), X)
    w_a, w_b = 1.0 / (1.0 + mv_a + 0.5), 1.0 / (1.0 + mv_b + 0.5)
    q_a, q_b = (w_a[:, None] * X).sum(0), (w_b[:, None] * X).sum(0)
    var0 = (((w_a + w_b) ** 2).sum() + q_b @ np.asarray(ca) @ q_b + q_a @ np.asarray(cb) @ q_a
            + 0.5 * (w_a + w_b).sum() ** 2)
    assert res["z"] == pytest.approx((w_b * 1.0 + w_a * 1.0).sum() / np.sqrt(var0))


def test_untestable_images_are_cannot_say_and_left_out():
    f = _fold(beta=(0.0, 0.0), gamma=(0.0, 0.0), theta=(2.0, 0.0), kappa=1.0)
    X = np.ones((2, 2))
    res = M.membership_test(np.array([5.0, 0.1]), X, np.array([False, True]), folds=(f, f))
    assert res["n_tested"] == 1 and res["n_no_shadow"] == 1
    assert res["images"]["status"][0] == M.CANNOT_SAY
    assert res["z"] == pytest.approx(0.1)  # only the testable image counts
    none = M.membership_test(np.array([5.0]), X[:1], np.array([False]), folds=(f, f))
    assert none["status"] == M.CANNOT_SAY and none["z"] is None


def test_low_power_is_cannot_say_never_pass():
    X = np.ones((1, 2))
    weak = _fold(beta=(0.0, 0.0), gamma=(0.0, 0.0), theta=(0.1, 0.0), kappa=1.0)
    res = M.membership_test(np.array([0.0]), X, np.ones(1, bool), folds=(weak, weak))
    assert res["power"] < 0.2 and res["status"] == M.CANNOT_SAY
    assert res["images"]["status"][0] == M.CANNOT_SAY
    strong = _fold(beta=(0.0, 0.0), gamma=(0.0, 0.0), theta=(4.0, 0.0), kappa=1.0)
    ok = M.membership_test(np.array([0.0]), X, np.ones(1, bool), folds=(strong, strong))
    assert ok["power"] > 0.9 and ok["status"] == M.PASS
    assert ok["images"]["status"][0] == M.FORGOTTEN


def test_model_offset_variance_finds_a_shared_offset():
    rng = np.random.default_rng(5)
    k, n, n_val = 12, 600, 300
    diff = rng.normal(2, 2, n + n_val)
    member = balanced_halves(n, k, seed=0)
    pm = balanced_halves(n_val, k, seed=1)
    offset = rng.normal(0, 0.5, k)  # each model sits higher or lower on pool images only
    conf = diff[None, :n] + offset[:, None] + rng.normal(size=(k, n))
    val = diff[None, n:] + rng.normal(size=(k, n_val))
    got = M.model_offset_variance(conf, member, val, pm)
    assert got["offset_var"] == pytest.approx(0.25, rel=0.6)
    none = M.model_offset_variance(conf - offset[:, None], member, val, pm)
    assert none["offset_var"] < 0.05


# ------------------------------------------------------------------------------------------
# The calibration problem, simulated: shadows on half the data, a candidate on all of it


def _simulate(seed: int, *, remember: bool, n_request: int, k: int = 16):
    """Shadow confidences (half-data models) and a full-data candidate that is more confident
    on unseen images than any shadow (offset and slope), with per-image difficulty, spread and
    memorisation gap."""
    rng = np.random.default_rng(seed)
    n, n_val = 1500, 400
    diff = rng.normal(2, 2, n + n_val)
    gap = np.abs(rng.normal(0.3, 0.6, n + n_val))
    spread = np.exp(rng.normal(0, 0.5, n + n_val))
    member = balanced_halves(n, k, seed=seed)
    model_effect = rng.normal(0, 0.3, k)
    conf = (diff[None, :n] + member * gap[None, :n] + model_effect[:, None]
            + rng.normal(size=(k, n)) * spread[None, :n])
    val_conf = diff[None, n:] + model_effect[:, None] + rng.normal(size=(k, n_val)) * spread[n:]
    shift = 0.8 + rng.normal(0, 0.3)
    cand = shift + 1.2 * (diff[:n] + gap[:n]) + rng.normal(size=n) * spread[:n] * 0.8
    if not remember:  # exact retraining: the request's images were never seen
        cand[:n_request] = (shift + 1.2 * diff[:n_request]
                            + rng.normal(size=n_request) * spread[:n_request] * 0.8)
    cand_val = shift + 1.2 * diff[n:] + rng.normal(size=n_val) * spread[n:] * 0.8
    f = slice(0, n_request)
    rest = slice(n_request, n)
    res = M.membership_evidence(
        target=cand[f], target_conf=conf[:, f], target_member=member[:, f],
        known_out=cand_val, known_out_conf=val_conf,
        known_out_member=balanced_halves(n_val, k, seed=seed + 1),
        known_in=cand[rest], known_in_conf=conf[:, rest], known_in_member=member[:, rest],
        globals_=M.Globals.from_confidences(conf, member))
    # the naive offline-LiRA reading: the candidate's confidence against the shadows' OUT
    # Gaussian of each image, averaged over the request
    out_conf = np.where(~member[:, f], conf[:, f], np.nan)
    naive = np.array([lira_offline_scores(np.array([cand[i]]),
                                          out_conf[~np.isnan(out_conf[:, i]), i][:, None])[0]
                      for i in range(n_request)])
    return res, float(naive.mean())


def test_calibrated_test_fails_memorisation_and_passes_retraining_at_its_level():
    retrain = [_simulate(s, remember=False, n_request=150) for s in range(120)]
    remember = [_simulate(1000 + s, remember=True, n_request=150) for s in range(30)]
    false_alarms = np.mean([r["p_value"] < 0.05 for r, _ in retrain])
    # binomial(120, 0.05): 99.9% of draws lie below 0.125
    assert 0.0 <= false_alarms <= 0.125
    assert np.mean([r["z"] for r, _ in retrain]) == pytest.approx(0.0, abs=0.35)
    assert all(r["status"] == M.FAIL for r, _ in remember)
    # the naive reading calls exact retraining a member: a full-data model is more confident
    # on unseen images than half-data shadows (mean OUT-Gaussian score far above 0.5)
    assert np.mean([naive for _, naive in retrain]) > 0.75


def test_one_image_requests_are_calibrated_and_mostly_cannot_say():
    runs = [_simulate(s, remember=False, n_request=1)[0] for s in range(200)]
    assert np.mean([r["p_value"] < 0.05 for r in runs]) <= 0.09
    assert sum(r["status"] == M.FAIL for r in runs) <= 4
    assert np.mean([r["status"] == M.CANNOT_SAY for r in runs]) > 0.5

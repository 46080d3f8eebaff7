"""The paired test against the original (evaluation.membership_paired) on synthetic data whose
truth is known: a candidate that is the original fails, exact forgetting passes, a noisy
candidate cannot say, and shadows that see no per-image memorisation cannot say."""

from __future__ import annotations

import numpy as np
import pytest

from medunlearn.evaluation.membership_paired import (
    CANNOT_SAY,
    FAIL,
    PASS,
    paired_test,
    retention,
    shrunk_gaps,
)
from medunlearn.evaluation.membership_stats import Globals


def _world(seed=0, n=2000, k=16, tau=1.0, lam=1.5, noise=0.4):
    """Shadows whose IN - OUT gap per image is g_true (spread tau), an original that keeps
    lam * g_true of it, and the indices of a 10% forget set."""
    rng = np.random.default_rng(seed)
    g_true = np.abs(rng.normal(0.5, tau, n)) if tau > 0 else np.full(n, 0.5)
    base = rng.normal(6.0, 1.0, n)
    member = np.zeros((k, n), bool)
    for j in range(n):
        member[rng.choice(k, k // 2, replace=False), j] = True
    conf = base + member * g_true + rng.normal(0, noise, (k, n))
    labels = rng.integers(0, 2, n)
    phi0 = base + 0.3 + lam * g_true + rng.normal(0, 0.2, n)
    forget = np.sort(rng.choice(n, n // 10, replace=False))
    retain = np.setdiff1d(np.arange(n), forget)
    return rng, conf, member, labels, phi0, forget, retain, g_true


def _run(world, phi_candidate):
    rng, conf, member, labels, phi0, forget, retain, _ = world
    gaps = shrunk_gaps(conf, member, Globals.from_confidences(conf, member))
    mu_out = np.where(~member, conf, 0).sum(0) / (~member).sum(0)
    lam = retention(phi0, mu_out, gaps.g, labels)
    delta = phi_candidate - phi0
    return paired_test(delta_forget=delta[forget], delta_retain=delta[retain],
                       phi0_forget=phi0[forget], phi0_retain=phi0[retain],
                       g_forget=gaps.g[forget], g_retain=gaps.g[retain],
                       y_forget=labels[forget], y_retain=labels[retain], lam=lam,
                       tau2=gaps.tau2, sampling_var=gaps.sampling_var,
                       gvar_forget=gaps.post_var[forget]), lam, gaps


def test_the_original_fails_and_exact_forgetting_passes():
    world = _world()
    rng, _, _, _, phi0, forget, _, g_true = world
    same, lam, gaps = _run(world, phi0.copy())
    assert gaps.tau2 > 0 and lam == pytest.approx(1.5, rel=0.3)
    assert same["status"] == FAIL and same["share"] == 0.0
    # per image: none looks forgotten; weakly memorised images cannot fail alone
    per_image = list(same["images"]["status"])
    assert "looks forgotten" not in per_image
    assert per_image.count("looks remembered") > len(per_image) / 2
    # exact forgetting: the forgotten images lose what the original kept, plus seed noise
    cand = phi0 + rng.normal(0, 0.3, len(phi0))
    cand[forget] -= 1.5 * g_true[forget]
    res, _, _ = _run(world, cand)
    assert res["status"] == PASS and 0.6 < res["share"] < 1.4, res
    # a light touch: a tenth of the drop, little noise -> fails
    light = phi0 + rng.normal(0, 0.05, len(phi0))
    light[forget] -= 0.15 * g_true[forget]
    assert _run(world, light)[0]["status"] == FAIL


def test_a_noisy_candidate_or_no_memorisation_cannot_say():
    world = _world(seed=1)
    rng, _, _, _, phi0, forget, _, g_true = world
    noisy = phi0 + rng.normal(0, 20.0, len(phi0))
    noisy[forget] -= 0.5 * 1.5 * g_true[forget]
    res = _run(world, noisy)[0]
    assert res["status"] == CANNOT_SAY and "confidence interval" in res["reason"]
    flat = _world(seed=2, tau=0.0)
    res = _run(flat, flat[4].copy())[0]
    assert res["status"] == CANNOT_SAY and "no difference between images" in res["reason"]
    assert res["share"] is None
    # a little real spread, drowned in shadow noise: the gaps cannot be trusted
    faint = _world(seed=3, tau=0.15, noise=1.5)
    res = _run(faint, faint[4].copy())[0]
    assert res["status"] == CANNOT_SAY and "mostly noise" in res["reason"], res["reason"]


def test_too_few_retained_images_cannot_say():
    res = paired_test(delta_forget=np.zeros(3), delta_retain=np.zeros(5),
                      phi0_forget=np.ones(3), phi0_retain=np.ones(5), g_forget=np.ones(3),
                      g_retain=np.ones(5), y_forget=np.zeros(3), y_retain=np.zeros(5),
                      lam=1.0, tau2=1.0, sampling_var=1.0)
    assert res["status"] == CANNOT_SAY and "too few images" in res["reason"]

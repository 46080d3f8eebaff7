"""Did the forgotten images lose what the model had memorised of them? A paired test against
the original, with the shadow models as the yardstick (pure numpy).

The calibrated test of :mod:`medunlearn.evaluation.membership` asks whether a candidate's
confidence on a forgotten image looks like a member's. On a model that generalises well that
question has little power, because every image is confidently classified whether it was trained
on or not. This test asks a sharper question, using the original model the candidate replaces:

* **What the original memorised of each image.** The K shadows give each training image an IN
  and an OUT mean of the logit-scaled confidence ``phi``; their difference is the image's
  memorisation at half-data scale, measured with noise (a few shadows per side). Empirical
  Bayes shrinks each gap towards the mean by the share of its variance that is real
  (``tau2 / (tau2 + s2)``, ``tau2`` the between-image variance of the gaps less their sampling
  variance): ``g`` (:func:`shrunk_gaps`). If ``tau2`` is 0, the shadows see no difference
  between images in how much they are memorised, and the test says "cannot say".
* **How much of that a full-data model keeps** (``lambda``): the original's ``phi`` minus the
  shadows' OUT mean, regressed on ``g`` (with the OUT mean and the class as covariates, so that
  a larger model's general confidence is not counted), over its training images. Exact
  retraining is expected to lower each forgotten image's ``phi`` by about ``lambda * g``.
* **What the candidate removed.** ``delta = phi_candidate - phi_original`` per image. Retained
  images (trained on by both) give the candidate's general drift, a regression of ``delta`` on
  ``(1, phi_original, g, class)``; the residual ``e`` on a forgotten image is its own change.
  ``rho = -sum(g e) / sum(g^2)`` over the forgotten images is the share of the expected drop
  the candidate made, in ``lambda`` units: about ``lambda`` for exact retraining, exactly 0 for
  the untouched original. Its standard error comes from the residuals on the retained images
  (what ``rho`` would be on images the candidate treated like any other).

**Verdict** (:func:`paired_test`), with ``share = rho / lambda``:

* ``fail`` ("looks remembered"): the upper confidence bound of ``share`` (level ``alpha``) is
  below ``min_share``: the candidate confidently removed less than that share of what exact
  retraining removes (the untouched original, a step that changed nearly nothing); the bound
  counts both the candidate's noise and how uncertain each image's gap still is (a forgotten
  image whose gap could be 0 cannot fail the test alone);
* ``pass`` ("looks forgotten"): not a fail, the lower bound of ``rho`` is above 0 (evidence
  of a forget-specific drop) and ``share`` itself is at least ``min_share`` (a drop too small
  to be retraining's, however significant, is not a pass: a head-only step on one image makes
  one);
* ``cannot say``: anything else (the interval holds both 0 and ``min_share``), and whenever the
  shadows or the original show no measurable memorisation (``tau2`` = 0, ``lambda`` <= 0),
  when the shadows' gaps are mostly noise (reliability ``tau2 / (tau2 + s2)`` below
  :data:`MIN_RELIABILITY`), or when fewer than :data:`MIN_IMAGES` retained images calibrate
  the candidate.

A one-image request is decided the same way from its one residual.

Directions (``directions.DIRECTIONS``): ``forget_effect_share`` higher is better up to
about 1 (exact retraining), ``forget_effect_z`` higher (more evidence of forgetting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from medunlearn.evaluation.membership_stats import Globals, image_stats, shrunk_variance
from medunlearn.evaluation.privacy import logit_confidence

PASS, FAIL, CANNOT_SAY = "pass", "fail", "cannot say"
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_SHARE = 0.5
MIN_IMAGES = 30  # retained images needed to measure the candidate's drift and noise
# The shadows' gaps must be at least this reliable (the share of their variance that is real
# differences between images, tau2 / (tau2 + s2)). Below it the gaps are mostly noise, and the
# original's slope on them (lambda) measures how hard an image is more than how memorised: on
# PneumoniaMNIST (reliability 0.00, 0.04, 0.07 over three seeds, lambda up to 7.8) the test
# then failed exact retraining in two seeds, while on TB (0.11 to 0.23) it passed exact
# retraining in every case measured (BENCHMARKS.md, membership). More shadows raise it.
MIN_RELIABILITY = 0.1


@dataclass(frozen=True)
class Gaps:
    """Per-image shrunk memorisation gaps ``g`` (nan where untestable), how uncertain each
    still is (``post_var``, the posterior variance ``tau2 s2 / (tau2 + s2)``) and the prior."""

    g: np.ndarray
    mean: float
    tau2: float
    sampling_var: float
    post_var: np.ndarray


def shrunk_gaps(conf: np.ndarray, member: np.ndarray, globals_: Globals) -> Gaps:
    """Empirical-Bayes memorisation gaps of the training images from the shadows'
    confidences ``(K, N)`` and membership ``(K, N)``."""
    st = image_stats(conf, member)
    vin = shrunk_variance(st.var_in, st.n_in - 1, globals_.var_in)
    vout = shrunk_variance(st.var_out, st.n_out - 1, globals_.var_out)
    gap = st.mu_in - st.mu_out
    s2 = vin / np.maximum(st.n_in, 1) + vout / np.maximum(st.n_out, 1)
    ok = st.testable & np.isfinite(gap) & np.isfinite(s2)
    if ok.sum() < 2:
        nan = np.full(len(gap), np.nan)
        return Gaps(nan, float("nan"), 0.0, float("nan"), nan)
    mean = float(gap[ok].mean())
    sv = float(s2[ok].mean())
    tau2 = max(float(gap[ok].var(ddof=1)) - sv, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.where(ok, mean + tau2 / (tau2 + s2) * (gap - mean), np.nan)
        post = np.where(ok, tau2 * s2 / (tau2 + s2), np.nan) if tau2 > 0 else \
            np.where(ok, 0.0, np.nan)
    return Gaps(g, mean, tau2, sv, post)


def _lstsq(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    return beta


def retention(phi_original: np.ndarray, mu_out: np.ndarray, g: np.ndarray,
              labels: np.ndarray) -> float:
    """``lambda``: how much of the shadows' memorisation gap the original keeps, the slope of
    ``phi_original - mu_out`` on ``g`` given ``(1, mu_out, class)`` over its training images
    (nan with fewer than :data:`MIN_IMAGES` usable images or no spread in ``g``)."""
    ok = np.isfinite(phi_original) & np.isfinite(mu_out) & np.isfinite(g)
    if ok.sum() < MIN_IMAGES or np.ptp(g[ok]) <= 0:
        return float("nan")
    X = np.column_stack([np.ones(ok.sum()), mu_out[ok], g[ok], labels[ok]])
    return float(_lstsq(X, (phi_original - mu_out)[ok])[2])


def paired_test(*, delta_forget: np.ndarray, delta_retain: np.ndarray,
                phi0_forget: np.ndarray, phi0_retain: np.ndarray, g_forget: np.ndarray,
                g_retain: np.ndarray, y_forget: np.ndarray, y_retain: np.ndarray,
                lam: float, tau2: float, sampling_var: float = 0.0,
                gvar_forget: np.ndarray | None = None, alpha: float = DEFAULT_ALPHA,
                min_share: float = DEFAULT_MIN_SHARE) -> dict:
    """The request's verdict from the candidate's changes ``delta`` against the original.

    Args:
        delta_forget, delta_retain: ``phi_candidate - phi_original`` on the request's images
            and on retained training images.
        phi0_forget, phi0_retain: The original's ``phi`` on them.
        g_forget, g_retain: Their shrunk gaps (:func:`shrunk_gaps`).
        y_forget, y_retain: Their labels.
        lam: :func:`retention`.
        tau2: The gaps' between-image variance (0: no per-image memorisation to test).
        sampling_var: Their mean sampling variance (with ``tau2``, the reliability).
        gvar_forget: The forgotten images' gap uncertainty (``Gaps.post_var``): a forgotten
            image's drop under exact retraining is uncertain by ``lambda^2`` times it, which
            widens the bound a fail is decided on (not the pass bound: under "remembered" the
            change is the candidate's noise only).
        alpha: One-sided level of both confidence bounds.
        min_share: Below this share of retraining's expected drop (confidently) = remembered.

    Returns:
        ``{"status", "reason", "rho", "se", "share", "share_upper", "z", "lambda", "tau2",
        "n_images", "n_tested", "alpha", "min_share", "images"}`` (per-image arrays: expected
        drop if forgotten ``lambda * g``, the residual change ``-e`` and its status).
    """
    def arr(a):
        return np.asarray(a, dtype=np.float64)

    df, dr, pf, pr, gf, gr = map(arr, (delta_forget, delta_retain, phi0_forget, phi0_retain,
                                       g_forget, g_retain))
    yf, yr = arr(y_forget), arr(y_retain)
    n = len(df)
    base = {"status": CANNOT_SAY, "rho": None, "se": None, "share": None,
            "share_upper": None, "z": None, "lambda": lam if np.isfinite(lam) else None,
            "tau2": tau2, "n_images": n, "n_tested": 0, "alpha": alpha,
            "min_share": min_share, "images": None}
    okr = np.isfinite(dr) & np.isfinite(pr) & np.isfinite(gr)
    okf = np.isfinite(df) & np.isfinite(pf) & np.isfinite(gf)
    if not tau2 > 0:
        return base | {"reason": "the shadow models see no difference between images in how "
                                 "much they are memorised (the spread of their IN - OUT gaps "
                                 "is no more than sampling noise): there is no per-image "
                                 "memorisation to test for"}
    rel = tau2 / (tau2 + sampling_var) if np.isfinite(sampling_var) else 0.0
    base["reliability"] = rel
    if rel < MIN_RELIABILITY:
        return base | {"reason": f"the shadow models' per-image memorisation gaps are mostly "
                                 f"noise (reliability {rel:.2f} < {MIN_RELIABILITY:g}): they "
                                 "cannot tell which images the model memorised (more shadow "
                                 "models make the gaps more reliable)"}
    if not (np.isfinite(lam) and lam > 0):
        return base | {"reason": "the original keeps none of the memorisation the shadows "
                                 "measure (lambda <= 0): nothing to remove"}
    if okr.sum() < MIN_IMAGES or not okf.any():
        return base | {"reason": f"too few images to calibrate the candidate (at least "
                                 f"{MIN_IMAGES} retained and one forgotten image with shadow "
                                 f"gaps; got {int(okr.sum())} and {int(okf.sum())})"}

    def design(phi0, g, y):
        return np.column_stack([np.ones(len(phi0)), phi0, g, y])

    b = _lstsq(design(pr[okr], gr[okr], yr[okr]), dr[okr])
    er = dr[okr] - design(pr[okr], gr[okr], yr[okr]) @ b
    ef = df[okf] - design(pf[okf], gf[okf], yf[okf]) @ b
    sigma2 = float((er ** 2).sum() / max(len(er) - 4, 1))
    gg = gf[okf]
    gv = (np.zeros(len(gg)) if gvar_forget is None
          else np.nan_to_num(arr(gvar_forget)[okf], nan=0.0))
    ss = float((gg ** 2).sum())
    rho = float(-(gg * ef).sum() / ss)
    se = float(np.sqrt(sigma2 / ss))  # under "remembered": the candidate's noise
    se1 = float(np.sqrt((gg ** 2 * (sigma2 + lam ** 2 * gv)).sum()) / ss)  # under "forgotten"
    zq = float(norm.isf(alpha))
    share, upper = rho / lam, (rho + zq * se1) / lam
    z = rho / se if se > 0 else (np.inf if rho > 0 else (-np.inf if rho < 0 else 0.0))
    if upper < min_share:
        status, reason = FAIL, (
            f"the candidate removed {share:.2f} of the drop exact retraining is expected to "
            f"make on these images (upper bound {upper:.2f} < {min_share:g}): they still look "
            "remembered")
    elif rho - zq * se > 0 and share >= min_share:
        status, reason = PASS, (f"a forget-specific drop of {share:.2f} of retraining's "
                                f"expected drop (z = {z:.2f})")
    else:
        status, reason = CANNOT_SAY, (
            f"share {share:.2f}, confidence interval from {(rho - zq * se) / lam:.2f} to "
            f"{upper:.2f}: it neither rules out {min_share:g} of retraining's drop nor shows "
            "that much (too few or too weakly memorised images for this candidate's noise)")
    # per image: one residual each, judged the same way
    se_i = np.sqrt(sigma2) / np.abs(gg)
    se1_i = np.sqrt(sigma2 + lam ** 2 * gv) / np.abs(gg)
    rho_i = -ef / gg
    up_i, lo_i = (rho_i + zq * se1_i) / lam, rho_i - zq * se_i
    st_i = np.where(up_i < min_share, "looks remembered",
                    np.where((lo_i > 0) & (rho_i / lam >= min_share), "looks forgotten",
                             CANNOT_SAY))
    images = {"expected_drop": np.full(n, np.nan), "drop": np.full(n, np.nan),
              "status": np.full(n, CANNOT_SAY, dtype=object)}
    images["expected_drop"][okf] = lam * gg
    images["drop"][okf] = -ef
    images["status"][okf] = st_i
    return base | {"status": status, "reason": reason, "rho": rho, "se": se,
                   "se_if_forgotten": se1, "share": share,
                   "share_upper": upper, "z": float(z), "n_tested": int(okf.sum()),
                   "sigma": float(np.sqrt(sigma2)), "images": images}




# ------------------------------------------------------------------- a shadow set's record section


def _gaps(cs) -> tuple[Gaps, np.ndarray]:
    """The set's shrunk gaps and its images' OUT means, computed once per set."""
    if "paired_gaps" not in cs._cache:
        conf = cs.confidences("train")
        cs._cache["paired_gaps"] = (
            shrunk_gaps(conf, cs.membership, Globals.from_confidences(conf, cs.membership)),
            image_stats(conf, cs.membership).mu_out)
    return cs._cache["paired_gaps"]


def paired_section(cs, model_outputs, original_outputs, *, forget: np.ndarray,
                   retain: np.ndarray, alpha: float = DEFAULT_ALPHA,
                   min_share: float = DEFAULT_MIN_SHARE) -> dict:
    """The paired test of one candidate against the original it replaces, as a record section
    (``models.<role>.forget_effect``), from outputs the verification computed anyway.

    Args:
        cs: The shadow set (:class:`medunlearn.evaluation.companions.CompanionSet`).
        model_outputs, original_outputs: ``forget`` and ``retain`` outputs of the candidate and
            of the original (:func:`medunlearn.evaluation.outputs.model_outputs`).
        forget, retain: Training indices of those rows.
        alpha, min_share: See :func:`paired_test`.
    """
    forget = np.asarray(forget, dtype=np.int64)
    retain = np.asarray(retain, dtype=np.int64)
    gaps, mu_out = _gaps(cs)

    def phi(o):
        return logit_confidence(o.probs, o.labels)

    p0f, p0r = phi(original_outputs["forget"]), phi(original_outputs["retain"])
    pf, pr = phi(model_outputs["forget"]), phi(model_outputs["retain"])
    yf, yr = original_outputs["forget"].labels, original_outputs["retain"].labels
    idx = np.concatenate([forget, retain])
    lam = retention(np.concatenate([p0f, p0r]), mu_out[idx], gaps.g[idx],
                    np.concatenate([yf, yr]))
    res = paired_test(delta_forget=pf - p0f, delta_retain=pr - p0r, phi0_forget=p0f,
                      phi0_retain=p0r, g_forget=gaps.g[forget], g_retain=gaps.g[retain],
                      y_forget=yf, y_retain=yr, lam=lam, tau2=gaps.tau2,
                      sampling_var=gaps.sampling_var, gvar_forget=gaps.post_var[forget],
                      alpha=alpha, min_share=min_share)
    images = res.pop("images")
    if images is not None:
        res["images"] = [{"index": int(i), "sha256": cs.train_hashes[int(i)],
                          "expected_drop": _num(images["expected_drop"][j]),
                          "drop": _num(images["drop"][j]), "status": str(images["status"][j])}
                         for j, i in enumerate(forget.tolist())]
    res["gap_mean"], res["sampling_var"] = gaps.mean, gaps.sampling_var
    return res


def _num(x) -> float | None:
    return float(x) if np.isfinite(x) else None


__all__ = ["CANNOT_SAY", "DEFAULT_ALPHA", "DEFAULT_MIN_SHARE", "FAIL", "Gaps", "MIN_IMAGES",
           "MIN_RELIABILITY", "PASS", "paired_section", "paired_test", "retention", "shrunk_gaps"]

"""Per-image membership evidence from shadow models, calibrated per candidate (pure numpy/scipy).

K shadow models are trained once with the model's own recipe on balanced random halves of the
training split (:mod:`medunlearn.shadows`), so every training image is IN (trained on) for about
half of them and OUT for the rest. As in LiRA (Carlini et al., S&P 2022) and U-LiRA (Hayes et
al., SaTML 2025) the statistic is the logit-scaled true-class confidence
``phi = log p_y - log(sum_{k != y} p_k)`` (:func:`member_confidences`).

**Calibrated per candidate.** A shadow is trained on half the data, the candidate (the original,
a retrained or an unlearned model) on nearly all of it. A model trained on more data is more
confident on images it never saw, so the candidate's phi on an unseen image sits above a
half-data shadow's OUT distribution, and a naive IN/OUT test calls exact retraining "IN". The
shadows' per-image means are therefore used only as a covariate, and the candidate's own
behaviour is measured on images whose membership it is known for (outputs that the
verification computes anyway; :func:`fit_map`):

* **OUT map**, on images nobody trained on (validation, optionally test):
  ``phi_f = a0 + b0 * mu_out + e``, ``e ~ N(0, s0^2 v)``;
* **IN map**, on the candidate's retained training images: ``phi_f = a1 + b1 * mu_in + e``.

``mu`` is the true mean over models; the shadows give a noisy mean (about K/4 models, see
below), so the slope is corrected for that noise (errors in variables: the "reliability"
``lambda``), else the residual would still depend on how hard an image is. ``v`` is a per-image
variance factor from the shadows' own spread (:func:`variance_factor`), so that images on
which models disagree (hard, ambiguous or mislabelled ones) are not taken for evidence.

**Cross-fitting.** Each image's OUT shadows are split in two halves (:func:`split_out`): half A
gives the residual ``r = phi_f - (a0 + b0 * mean_A)``, half B (with the IN shadows) gives
everything the test decides with: the expected IN-OUT gap, the weights, the variance factor and
the power. The residual's noise is then independent of the weights and of the "cannot say"
decision; using one mean for both makes an image whose OUT mean came out low look both
informative and member-like, and the test fires on exact retraining. Validation images get the
same treatment (a pseudo half of the shadows plays IN and is ignored), so their ``mean_A``
averages as many models as a training image's.

**The test** (:func:`membership_test`). Per image, H0 (never seen: ``N(m0, V)``) against H1
(remembered as the candidate remembers its retained images: ``N(m1, V1)``). The per-request
statistic is the likelihood-ratio-weighted sum ``S = sum_i w_i r_i``, ``w_i = gap_i / V_i``,
which given B is ``N(0, sum w^2 V + calibration)`` under H0 (the OUT map's own uncertainty is
shared by all images); ``z`` is it standardised (about N(0, 1) for a model that never saw the
images; larger = more member-like) and ``p_value = P(Z >= z | H0)``, one-sided. The **power** is
the chance to reach ``p < alpha`` if the images were remembered; a request whose power is below
``min_power`` (too few images, or IN and OUT distributions that overlap) is "cannot say", never
"passed". Images without an IN shadow, or with fewer than two OUT shadows, are "cannot say"
and left out of the aggregate. ``log_lr`` is the sum of the per-image Gaussian log likelihood
ratios (IN against OUT), for reading, not for deciding.

Directions (``directions.DIRECTIONS``): ``membership_z`` lower is better (less member-like; near
0 for exact retraining), ``membership_p_value`` higher, ``membership_power`` higher (a more
informative test).

Everything here is a pure function of arrays; :mod:`medunlearn.shadows` extracts them from a
companion set and a candidate's outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from medunlearn.evaluation.privacy import logit_confidence
from medunlearn.evaluation.utility import softmax

PASS, FAIL, CANNOT_SAY = "pass", "fail", "cannot say"
REMEMBERED, FORGOTTEN = "looks remembered", "looks forgotten"
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_POWER = 0.8
MIN_CALIBRATION_IMAGES = 10  # fewer known-OUT or known-IN images: no calibration
VARIANCE_PRIOR = 4.0  # pseudo-observations shrinking each image's variance to the global one
MIN_RELIABILITY = 0.5  # the errors-in-variables correction divides the slope by at most 2


def member_confidences(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Logit-scaled true-class confidences ``(K, n)`` from K models' logits ``(K, n, C)``."""
    lo = np.asarray(logits, dtype=np.float64)
    return np.stack([logit_confidence(softmax(x), labels) for x in lo])


def split_out(member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split each image's OUT shadows into halves A and B ``(K, n)`` bool each.

    In shadow order, the first ``ceil(n_out / 2)`` OUT shadows of an image form A (its residual),
    the rest B (its weights and variance). The balanced design makes which shadows are OUT
    random, so both halves are random subsets.
    """
    out = ~np.asarray(member, dtype=bool)
    rank = np.cumsum(out, axis=0)  # 1-based position among the image's OUT shadows
    half = (out.sum(axis=0) + 1) // 2
    a = out & (rank <= half[None, :])
    return a, out & ~a


def _side(conf: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image mean, sample variance and count over the rows in ``use``."""
    n = use.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(n > 0, np.where(use, conf, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)
        dev = np.where(use, conf - np.nan_to_num(mu)[None, :], 0.0)
        var = np.where(n > 1, (dev ** 2).sum(axis=0) / np.maximum(n - 1, 1), np.nan)
    return mu, var, n


@dataclass(frozen=True)
class ImageStats:
    """Per-image summaries of the shadows' confidences, ``(n,)`` each (nan where undefined).

    ``a``/``b``: the two halves of the OUT shadows (:func:`split_out`); ``in``: IN shadows."""

    mu_a: np.ndarray
    n_a: np.ndarray
    mu_b: np.ndarray
    n_b: np.ndarray
    var_out: np.ndarray  # within-half variance pooled over A and B (nan when dof_out is 0)
    dof_out: np.ndarray  # n_a + n_b - 2
    mu_in: np.ndarray
    var_in: np.ndarray
    n_in: np.ndarray

    @property
    def testable(self) -> np.ndarray:
        """Images with an IN shadow and an OUT shadow in each half."""
        return (self.n_in > 0) & (self.n_a > 0) & (self.n_b > 0)


def image_stats(conf: np.ndarray, member: np.ndarray) -> ImageStats:
    """Shadow summaries of n images from confidences ``(K, n)`` and membership ``(K, n)``.

    For images nobody trained on (validation, test), pass a pseudo membership (a balanced
    half of the shadows): those rows are ignored, so the OUT halves average as many shadows as
    a training image's.
    """
    c = np.asarray(conf, dtype=np.float64)
    m = np.asarray(member, dtype=bool)
    if c.shape != m.shape or c.ndim != 2:
        raise ValueError(f"confidences {c.shape} and membership {m.shape} must both be (K, n)")
    a, b = split_out(m)
    mu_a, var_a, n_a = _side(c, a)
    mu_b, var_b, n_b = _side(c, b)
    mu_in, var_in, n_in = _side(c, m)
    # for Gaussian confidences each half's variance is independent of its mean, so the pooled
    # within-half variance shares no noise with mean_A (the residual) or mean_B (the weights)
    da, db = np.clip(n_a - 1, 0, None), np.clip(n_b - 1, 0, None)
    dof = da + db
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(dof > 0, (da * np.nan_to_num(var_a) + db * np.nan_to_num(var_b))
                       / np.maximum(dof, 1), np.nan)
    return ImageStats(mu_a, n_a, mu_b, n_b, var, dof, mu_in, var_in, n_in)


def pooled_variance(var: np.ndarray, n: np.ndarray) -> float:
    """Within-image variance pooled over images (weights ``n - 1``), LiRA's "global variance"
    for few shadows; nan when no image has two models."""
    var, n = np.asarray(var, dtype=np.float64), np.asarray(n)
    ok = (n > 1) & np.isfinite(var)
    if not ok.any():
        return float("nan")
    return float(((n[ok] - 1) * var[ok]).sum() / (n[ok] - 1).sum())


def shrunk_variance(var: np.ndarray, dof: np.ndarray, global_var: float, *,
                    prior: float = VARIANCE_PRIOR) -> np.ndarray:
    """Each image's variance (with ``dof`` degrees of freedom) shrunk towards ``global_var``
    with ``prior`` pseudo-observations (a variance from a few models is noisy)."""
    dof = np.clip(np.asarray(dof, dtype=np.float64), 0, None)
    v = np.where(dof > 0, np.nan_to_num(np.asarray(var, dtype=np.float64)), 0.0)
    return (dof * v + prior * global_var) / (dof + prior)


def variance_factor(stats: ImageStats, global_var_out: float, *, shrink: bool = True,
                    floor: float = 0.1) -> np.ndarray:
    """Relative variance ``v`` of each image's confidence across models that never saw it
    (mean about 1): its within-half OUT variance over the training split's pooled OUT variance
    ``global_var_out``.

    ``shrink``: shrunk towards the global value (:func:`shrunk_variance`; a stable value for
    weighting), floored at ``floor``. Otherwise the unbiased per-image estimate (the global
    value where the halves give no degree of freedom), for variances of sums.
    """
    if not np.isfinite(global_var_out) or global_var_out <= 0:
        return np.ones(len(stats.mu_b))
    if shrink:
        per = shrunk_variance(stats.var_out, stats.dof_out, global_var_out)
        return np.maximum(per / global_var_out, floor)
    per = np.where(stats.dof_out > 0, np.nan_to_num(stats.var_out), global_var_out)
    return per / global_var_out


@dataclass(frozen=True)
class CalibratedMap:
    """``phi = a + b mu + e``, ``e ~ N(0, s2 v)``, with ``mu`` the true per-image mean (the
    slope is corrected for the noise of the shadow means; ``reliability`` = the share of the
    covariate's variance that is signal)."""

    a: float
    b: float
    s2: float
    cov: tuple[tuple[float, float], tuple[float, float]]  # covariance of (a, b)
    n: int
    reliability: float

    def mean(self, x: np.ndarray) -> np.ndarray:
        return self.a + self.b * np.asarray(x, dtype=np.float64)

    def mean_var(self, x: np.ndarray) -> np.ndarray:
        """Variance of the fitted mean at ``x`` (parameter uncertainty)."""
        x = np.asarray(x, dtype=np.float64)
        c = np.asarray(self.cov)
        return c[0, 0] + 2 * c[0, 1] * x + c[1, 1] * x * x

    def to_dict(self) -> dict:
        return asdict(self) | {"cov": [list(r) for r in self.cov]}


def fit_map(x: np.ndarray, y: np.ndarray, *, noise_var: np.ndarray | None = None,
            v: np.ndarray | None = None, v_raw: np.ndarray | None = None,
            noise_raw: np.ndarray | None = None) -> CalibratedMap | None:
    """Weighted errors-in-variables regression of ``y`` on a noisy covariate ``x``.

    With weights ``1 / v``: ``b = Sxy / (Sxx - mean(noise_var))`` (the ordinary slope divided
    by the reliability, at most by ``1 / MIN_RELIABILITY``), ``a = mean(y) - b mean(x)``, and
    ``s2 = (sum r^2 - b^2 sum noise_raw) / sum v_raw`` for residuals ``r`` (the part of the
    residual variance that is not the covariate's noise, per unit of ``v``; ratios of sums, so
    that unbiased but noisy per-image ``v_raw`` and ``noise_raw`` give an unbiased value). The
    covariance of ``(a, b)`` is the weighted least-squares sandwich, carried through the
    correction.

    Args:
        x: ``(n,)`` noisy covariate (shadow means).
        y: ``(n,)`` response (the candidate's confidences).
        noise_var: ``(n,)`` variance of each ``x`` around its true value (default 0).
        v: ``(n,)`` relative variance of each ``y`` (default 1): the regression weights.
        v_raw, noise_raw: Unbiased per-image versions of ``v`` and ``noise_var`` for ``s2``
            (default: ``v`` and ``noise_var``).

    Returns:
        The map, or None with fewer than :data:`MIN_CALIBRATION_IMAGES` finite points.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    t2 = np.zeros_like(x) if noise_var is None else np.asarray(noise_var, dtype=np.float64)
    v = np.ones_like(x) if v is None else np.asarray(v, dtype=np.float64)
    vr = v if v_raw is None else np.asarray(v_raw, dtype=np.float64)
    tr = t2 if noise_raw is None else np.asarray(noise_raw, dtype=np.float64)
    ok = (np.isfinite(x) & np.isfinite(y) & np.isfinite(v) & (v > 0) & np.isfinite(t2)
          & np.isfinite(vr) & np.isfinite(tr))
    x, y, v, t2, vr, tr = x[ok], y[ok], v[ok], t2[ok], vr[ok], tr[ok]
    n = len(x)
    if n < MIN_CALIBRATION_IMAGES:
        return None
    w = 1.0 / v
    sw = w.sum()
    xm, ym = (w * x).sum() / sw, (w * y).sum() / sw
    sxx = (w * (x - xm) ** 2).sum() / sw
    sxy = (w * (x - xm) * (y - ym)).sum() / sw
    noise = (w * t2).sum() / sw
    if sxx <= 1e-12:  # the covariate does not vary: a constant map
        r = y - ym
        s2 = float(max((w * r * r).sum() / max(n - 1, 1), 1e-12))
        return CalibratedMap(float(ym), 0.0, s2, ((s2 / sw, 0.0), (0.0, 0.0)), n, 0.0)
    lam = float(np.clip((sxx - noise) / sxx, MIN_RELIABILITY, 1.0))
    b_ols = sxy / sxx
    b = b_ols / lam
    a = ym - b * xm
    r = y - a - b * x
    s2 = float(max(((r * r).sum() - b * b * tr.sum()) / vr.sum(),
                   1e-3 * (r * r).sum() / vr.sum() + 1e-12))
    # sandwich covariance of the weighted least-squares (a, b), then through b -> b / lam
    X = np.stack([np.ones(n), x], axis=1)
    bread = np.linalg.inv(X.T @ (X * w[:, None]))
    r_ols = y - (ym - b_ols * xm) - b_ols * x
    meat = X.T @ (X * (w * w * r_ols * r_ols)[:, None])
    c = bread @ meat @ bread * n / max(n - 2, 1)
    jac = np.array([[1.0, -xm * (1 / lam - 1)], [0.0, 1 / lam]])
    c = jac @ c @ jac.T
    return CalibratedMap(float(a), float(b), s2,
                         ((float(c[0, 0]), float(c[0, 1])), (float(c[1, 0]), float(c[1, 1]))),
                         n, lam)


def power(z_if_member: float, sd_ratio: float, alpha: float, dof: float | None = None
          ) -> float:
    """Chance that the one-sided test at level ``alpha`` (critical value of a t distribution
    with ``dof`` degrees of freedom; None: normal) rejects when its statistic is about
    ``N(z_if_member, sd_ratio^2)`` (a remembered request)."""
    if not (np.isfinite(z_if_member) and np.isfinite(sd_ratio)) or sd_ratio <= 0:
        return float("nan")
    crit = norm.isf(alpha) if dof is None or not np.isfinite(dof) else student_t.isf(alpha, dof)
    return float(norm.sf((crit - z_if_member) / sd_ratio))


def _satterthwaite(var: np.ndarray, dof: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Welch-Satterthwaite degrees of freedom of ``var + known`` (``known`` exact)."""
    var, dof, known = (np.asarray(x, dtype=np.float64) for x in (var, dof, known))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (var + known) ** 2 / np.where(np.isfinite(dof), var ** 2 / dof, 0.0)
    return np.where(np.isfinite(out) & (out > 0), out, np.inf)


@dataclass(frozen=True)
class Globals:
    """Variances pooled over the whole training split (so that a one-image request is scaled
    like any other): the shadows' OUT (half B) and IN within-image variances."""

    var_out: float
    var_in: float

    @classmethod
    def from_confidences(cls, conf: np.ndarray, member: np.ndarray) -> Globals:
        """From the shadows' confidences ``(K, N)`` and membership on the training split."""
        c = np.asarray(conf, dtype=np.float64)
        m = np.asarray(member, dtype=bool)
        _, var_out, n_out = _side(c, ~m)
        _, var_in, n_in = _side(c, m)
        return cls(pooled_variance(var_out, n_out), pooled_variance(var_in, n_in))


@dataclass(frozen=True)
class _Noise:
    """Per-image variance terms (see :func:`membership_test`)."""

    v: np.ndarray  # shrunk OUT variance factor (per-image decisions)
    v_raw: np.ndarray  # unbiased OUT variance factor (variance of sums)
    ta: np.ndarray  # variance of mean_A around the true OUT mean (shrunk)
    ta_raw: np.ndarray  # the same, unbiased
    tb: np.ndarray  # variance of mean_B
    ti: np.ndarray  # variance of mean_in
    u: np.ndarray  # shrunk IN variance factor (weights: independent of half A and half B)


def _noise(stats: ImageStats, g: Globals) -> _Noise:
    s_out = shrunk_variance(stats.var_out, stats.dof_out, g.var_out)
    raw_out = np.where(stats.dof_out > 0, np.nan_to_num(stats.var_out), g.var_out)
    s_in = shrunk_variance(stats.var_in, stats.n_in - 1, g.var_in)
    n_a, n_b, n_in = (np.maximum(x, 1) for x in (stats.n_a, stats.n_b, stats.n_in))
    u = (s_in / g.var_in) if np.isfinite(g.var_in) and g.var_in > 0 else np.ones(len(s_in))
    return _Noise(v=variance_factor(stats, g.var_out),
                  v_raw=variance_factor(stats, g.var_out, shrink=False),
                  ta=s_out / n_a, ta_raw=raw_out / n_a, tb=s_out / n_b, ti=s_in / n_in, u=u)


@dataclass(frozen=True)
class Residuals:
    """The candidate's residuals against its OUT map on n images, and what the test needs about
    them (``(n,)`` each): ``r`` (from half A), its H0 variance ``V`` (shrunk, per-image
    decisions) and ``V_raw`` (unbiased, sums), the shadows' gap ``g = mean_in - mean_B`` and
    ``ok`` (testable)."""

    r: np.ndarray
    V: np.ndarray
    V_raw: np.ndarray
    W: np.ndarray  # V from the IN shadows' spread (weights: independent of halves A and B)
    cal: np.ndarray  # variance of the fitted OUT mean at each image (part of V, not of V_raw)
    dof: np.ndarray  # degrees of freedom of V_raw (inf where it is the global value)
    g: np.ndarray
    xa: np.ndarray
    ok: np.ndarray


def residuals(phi: np.ndarray, stats: ImageStats, out_map: CalibratedMap, globals_: Globals
              ) -> Residuals:
    """Residuals ``r = phi - (a0 + b0 mean_A)`` with their H0 variance
    ``V = s0 v + b0^2 ta + var(fitted mean)`` (see :func:`membership_test`)."""
    phi = np.asarray(phi, dtype=np.float64)
    ok = stats.testable & np.isfinite(phi)
    nz = _noise(stats, globals_)
    xa = np.where(ok, stats.mu_a, 0.0)
    cal = out_map.mean_var(xa)
    V = out_map.s2 * nz.v + out_map.b ** 2 * nz.ta + cal
    V_raw = out_map.s2 * nz.v_raw + out_map.b ** 2 * nz.ta_raw
    W = nz.u * (out_map.s2 + out_map.b ** 2 * globals_.var_out / np.maximum(stats.n_a, 1))
    dof = np.where(stats.dof_out > 0, stats.dof_out, np.inf).astype(np.float64)
    g = np.where(ok, stats.mu_in - stats.mu_b, 0.0)
    return Residuals(phi - out_map.mean(xa), V, V_raw, W, cal, dof, g, xa, ok)


@dataclass(frozen=True)
class InResponse:
    """How the candidate's residuals respond on images it was trained on:
    ``r ~ N(alpha + rho g, kappa V)`` with ``g`` the shadows' IN-OUT gap, fitted on its retained
    images (:func:`fit_in_response`). ``cov`` is the covariance of ``(alpha, rho)``."""

    alpha: float
    rho: float
    kappa: float
    cov: tuple[tuple[float, float], tuple[float, float]]
    n: int

    def mean(self, g: np.ndarray) -> np.ndarray:
        return self.alpha + self.rho * np.asarray(g, dtype=np.float64)

    def to_dict(self) -> dict:
        return asdict(self) | {"cov": [list(r) for r in self.cov]}


def fit_in_response(res: Residuals) -> InResponse | None:
    """Weighted least squares (weights ``1 / V``) of the residuals on the shadows' gap over the
    candidate's retained images, where membership is known to be IN.

    This is the test's alternative, measured on the candidate itself: a model that remembers
    its training images shows ``alpha + rho g`` there, whatever its architecture, data size or
    calibration. The gap is noisy, so the regression estimates what the residual does given
    the *noisy* gap, which is what a forgotten image also has. None with fewer than
    :data:`MIN_CALIBRATION_IMAGES` images.
    """
    ok = res.ok & np.isfinite(res.r) & (res.V > 0)
    n = int(ok.sum())
    if n < MIN_CALIBRATION_IMAGES:
        return None
    r, g, V = res.r[ok], res.g[ok], res.V[ok]
    w = 1.0 / V
    X = np.stack([np.ones(n), g], axis=1)
    xtwx = X.T @ (X * w[:, None])
    if np.linalg.matrix_rank(xtwx) < 2:  # the gap does not vary: a constant response
        a = float((w * r).sum() / w.sum())
        kappa = float((w * (r - a) ** 2).sum() / max(n - 1, 1))
        return InResponse(a, 0.0, kappa, ((kappa / w.sum(), 0.0), (0.0, 0.0)), n)
    beta = np.linalg.solve(xtwx, X.T @ (w * r))
    e = r - X @ beta
    kappa = float((w * e * e).sum() / (n - 2))
    bread = np.linalg.inv(xtwx)
    c = bread @ (X.T @ (X * (w * w * e * e)[:, None])) @ bread * n / (n - 2)
    return InResponse(float(beta[0]), float(beta[1]), kappa,
                      ((float(c[0, 0]), float(c[0, 1])), (float(c[1, 0]), float(c[1, 1]))), n)


def membership_test(target: Residuals, *, in_response: InResponse, out_map: CalibratedMap,
                    alpha: float = DEFAULT_ALPHA, min_power: float = DEFAULT_MIN_POWER) -> dict:
    """Per-image evidence and the request's aggregate test.

    Per testable image: under H0 (never seen) ``r ~ N(0, V)``; under H1 (remembered, as the
    candidate remembers its retained images) ``r ~ N(m1, kappa V)`` with
    ``m1 = alpha + rho g``. Per image ``z = r / sqrt(V)``, ``p = P(N(0, 1) >= z)`` and the power
    ``P(N(m1 / sqrt(V), kappa) >= z_alpha)``.

    Aggregate: ``S = sum w_i r_i``, ``w_i = m1_i / W_i`` (the log likelihood ratio's slope;
    ``W`` is ``V`` with the image's spread taken from its IN shadows, so that no weight shares
    noise with the variance estimate), with
    ``Var0(S) = sum w_i^2 V_raw_i + q' C q`` (``C``: the OUT map's parameter covariance, shared
    by all images; ``q = sum_i w_i (1, mean_A_i)``); ``z = S / sd0``. Under H1
    ``E(S) = sum w_i m1_i`` less one standard error of that estimate (the response is fitted,
    so the power is not overstated), ``Var1(S) = kappa sum w_i^2 V_raw_i + q' C q``.

    Returns:
        ``{"status", "reason", "z", "p_value", "log_lr", "z_if_member", "sd_ratio", "power",
        "n_images", "n_tested", "n_no_shadow", "alpha", "min_power", "images"}``; ``status``
        is "fail" (``p_value < alpha``: member-like), "pass", or "cannot say" (no testable
        image, or power below ``min_power``); ``images`` holds per-image arrays.
    """
    t = target
    ok = t.ok
    n = len(ok)
    m1 = in_response.mean(t.g)
    kappa = max(in_response.kappa, 1e-12)
    sdv = np.sqrt(np.where(t.V > 0, t.V, np.nan))
    # per image: the unbiased variance (t distribution with its degrees of freedom, widened by
    # the fitted map's share); its power with the stable, shrunk variance
    v_i = t.V_raw + t.cal
    dof_i = _satterthwaite(t.V_raw, t.dof, t.cal)
    z_i = t.r / np.sqrt(np.where(v_i > 0, v_i, np.nan))
    p_i = student_t.sf(z_i, dof_i)
    pow_i = norm.sf((student_t.isf(alpha, dof_i) - m1 / sdv) / np.sqrt(kappa))
    llr = norm.logpdf(t.r, m1, np.sqrt(kappa) * sdv) - norm.logpdf(t.r, 0.0, sdv)
    status_i = np.where(~ok | ~(pow_i >= min_power), CANNOT_SAY,
                        np.where(p_i < alpha, REMEMBERED, FORGOTTEN))

    def masked(x):
        return np.where(ok, x, np.nan)

    images = {"residual": masked(t.r), "z": masked(z_i), "p_value": masked(p_i),
              "log_lr": masked(llr), "power": masked(pow_i), "expected_if_member": masked(m1),
              "status": status_i}
    out = {"n_images": n, "n_tested": int(ok.sum()), "n_no_shadow": int((~ok).sum()),
           "alpha": alpha, "min_power": min_power, "images": images}
    if not ok.any():
        return out | {"z": None, "p_value": None, "log_lr": None, "z_if_member": None,
                      "sd_ratio": None, "power": None, "status": CANNOT_SAY,
                      "reason": "no image has an IN shadow model and an OUT shadow model in "
                                "each half"}
    w = (m1 / t.W)[ok]
    q = np.array([w.sum(), (w * t.xa[ok]).sum()])
    cal = float(q @ np.asarray(out_map.cov) @ q)
    c = w * w * t.V_raw[ok]
    base = float(c.sum())
    var0, var1 = base + cal, kappa * base + cal
    dof = float(_satterthwaite(np.array([base]), np.array([np.inf]), np.array([cal]))[0]
                if not np.isfinite(t.dof[ok]).any() else
                var0 ** 2 / max(float((c ** 2 / t.dof[ok]).sum()), 1e-300))
    if not var0 > 0:
        return out | {"z": None, "p_value": None, "log_lr": float(llr[ok].sum()),
                      "z_if_member": 0.0, "sd_ratio": None, "power": 0.0, "status": CANNOT_SAY,
                      "reason": "the candidate's retained images respond no differently from "
                                "unseen ones: nothing to test with"}
    sd0 = float(np.sqrt(var0))
    z = float((w * t.r[ok]).sum() / sd0)
    # E1(S) and its standard error from the fitted response's covariance
    d = np.array([w.sum(), (w * t.g[ok]).sum()])
    e1 = float((w * m1[ok]).sum() - np.sqrt(max(d @ np.asarray(in_response.cov) @ d, 0.0)))
    z_mem = max(e1, 0.0) / sd0
    ratio = float(np.sqrt(var1 / var0))
    p = float(student_t.sf(z, dof))
    pw = power(z_mem, ratio, alpha, dof)
    n_ok = int(ok.sum())
    if not pw >= min_power:
        status, reason = CANNOT_SAY, (
            f"the test's power is {pw:.2f} (< {min_power:g}): on these {n_ok} image(s) the "
            "candidate's remembered and unseen images look too much alike (too few images, or "
            "the shadow models' IN and OUT confidences overlap)")
    elif p < alpha:
        status, reason = FAIL, (f"z = {z:.2f}, p = {p:.3g} < {alpha:g}: the images still look "
                                "like members")
    else:
        status, reason = PASS, f"z = {z:.2f}, p = {p:.3g} >= {alpha:g}, power {pw:.2f}"
    return out | {"z": z, "p_value": p, "log_lr": float(llr[ok].sum()), "z_if_member": z_mem,
                  "sd_ratio": ratio, "dof": dof if np.isfinite(dof) else None, "power": pw,
                  "status": status, "reason": reason}


def membership_evidence(*, target: np.ndarray, target_conf: np.ndarray, target_member: np.ndarray,
                        known_out: np.ndarray, known_out_conf: np.ndarray,
                        known_out_member: np.ndarray, known_in: np.ndarray,
                        known_in_conf: np.ndarray, known_in_member: np.ndarray,
                        globals_: Globals, alpha: float = DEFAULT_ALPHA,
                        min_power: float = DEFAULT_MIN_POWER) -> dict:
    """Everything from arrays: calibrate the candidate, then test the request's images.

    Args:
        target: ``(F,)`` the candidate's confidences on the request's (forgotten) images.
        target_conf, target_member: ``(K, F)`` shadow confidences and membership of them.
        known_out: ``(V,)`` the candidate's confidences on images nobody trained on.
        known_out_conf, known_out_member: ``(K, V)`` shadow confidences and a pseudo
            membership (a balanced half of the shadows, ignored; see :func:`image_stats`).
        known_in: ``(R,)`` the candidate's confidences on its retained training images.
        known_in_conf, known_in_member: ``(K, R)`` shadow confidences and membership.
        globals_: Pooled variances over the whole training split (:class:`Globals`).
        alpha, min_power: See :func:`membership_test`.

    Returns:
        :func:`membership_test`'s dict plus ``k`` and ``calibration`` (the OUT map and the IN
        response).
    """
    o_stats = image_stats(known_out_conf, known_out_member)
    no = _noise(o_stats, globals_)
    out_map = fit_map(o_stats.mu_a, known_out, noise_var=no.ta, v=no.v, v_raw=no.v_raw,
                      noise_raw=no.ta_raw)
    k = int(np.asarray(target_conf).shape[0])
    in_resp = None
    if out_map is not None:
        in_res = residuals(known_in, image_stats(known_in_conf, known_in_member), out_map,
                           globals_)
        in_resp = fit_in_response(in_res)
    if out_map is None or in_resp is None:
        which = "unseen (validation/test)" if out_map is None else "retained training"
        return {"status": CANNOT_SAY, "k": k, "n_images": len(target), "n_tested": 0,
                "reason": f"fewer than {MIN_CALIBRATION_IMAGES} {which} images to calibrate the "
                          "candidate on", "z": None, "p_value": None, "power": None,
                "z_if_member": None, "sd_ratio": None, "calibration": None, "alpha": alpha,
                "min_power": min_power}
    t = residuals(target, image_stats(target_conf, target_member), out_map, globals_)
    res = membership_test(t, in_response=in_resp, out_map=out_map, alpha=alpha,
                          min_power=min_power)
    res["k"] = k
    res["calibration"] = {"out": out_map.to_dict(), "in_response": in_resp.to_dict(),
                          "globals": asdict(globals_)}
    return res

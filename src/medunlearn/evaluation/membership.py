"""Per-image membership evidence from shadow models, calibrated per candidate (pure numpy/scipy).

K shadow models are trained once with the model's own recipe on balanced random halves of the
training split (:mod:`medunlearn.shadows`), so every training image is IN (trained on) for about
half of them and OUT for the rest. As in LiRA (Carlini et al., S&P 2022) and U-LiRA (Hayes et
al., SaTML 2025) the statistic is the logit-scaled true-class confidence
``phi = log p_y - log(sum_{k != y} p_k)`` (:func:`member_confidences`), and every image gets an
IN and an OUT distribution over the shadows (:func:`image_stats`).

**Why the candidate is calibrated on its own outputs.** A shadow is trained on half the data,
the candidate (the original, a retrained or an unlearned model) on nearly all of it. A model
trained on more data is more confident on images it never saw, so the candidate's phi on an
unseen image sits above a half-data shadow's OUT distribution, and the plain LiRA reading
calls exact retraining "IN". Here the shadows only describe each image (its OUT mean
``mu_out`` and the spread ``l`` of its OUT confidences: :func:`features`), and the candidate's
own behaviour is measured on images whose membership it is known for, from outputs the
verification computes anyway:

* **OUT model** (:func:`fit_out_model`), on images nobody trained on (the validation split,
  optionally test): the candidate's ``phi`` given the features, ``phi = X beta + e``, with a
  log-linear variance ``Var(e | X) = exp(Z gamma)`` on the linear features ``Z`` (images on
  which the shadows disagree vary more for the candidate too). For these images the OUT mean
  averages a balanced half of the shadows (the other half plays IN and is ignored), so their
  features are as noisy as a training image's.
* **IN response** (:func:`fit_in_response`), on the candidate's retained training images (IN
  for it): how far above its OUT model a remembered image sits, ``r ~ N(X theta, kappa V)``.

Every quantity the test decides with (the residual's expectation and variance, the weights,
the power) is a function of the same features, so under "never seen" the residual has mean 0
given everything else the test uses, whatever the images' difficulty. The shadows' IN means are
reported per image (how far a remembered image would move, by the shadows) but never enter a
decision: on validation images they do not exist, so nothing could calibrate them.

**The test** (:func:`membership_test`). Per forgotten image: the residual ``r = phi - X beta``,
under H0 (never seen) ``N(0, V)``, under H1 (remembered as the candidate remembers its retained
images) ``N(m1, kappa V)`` with ``m1 = X theta``. The request's statistic is the sum of the
residuals weighted by the Gaussian log likelihood ratio's slope ``m1 / V``, **cross-fitted**: the
calibration images are split in two folds, each with its own OUT model and IN response, and
each fold's residuals are weighted by the other fold's weights (a response fitted against an
OUT model absorbs that model's estimation error, which would otherwise push the sum up for a
model that never saw the images). Under H0 the sum has mean 0 and a known variance, which
includes both OUT models' own uncertainty and a model-level offset between the training pool
and the calibration images measured on held-out shadows (:func:`model_offset_variance`).
``z`` is the sum standardised (about N(0, 1) for a model that never saw the images; larger =
more member-like) and ``p_value = P(Z >= z | H0)``, one-sided. The **power** is the chance to
reach ``p < alpha`` if the images were remembered; a request whose power is below ``min_power``
(too few images, or images the model barely memorises) gets "cannot say", never "passed".
Images without an IN or with fewer than two OUT shadows are "cannot say" and left out of the
aggregate. A one-image request is exactly that image's per-image result.

Validity rests on one exchangeability assumption, stated in the record: given their shadow
features, the request's images behave for a model that never saw them like the validation
images (true for images drawn from the training pool; the validation split is carved from it).
``bench/bench_membership.py`` measures the false-alarm rate on real retrained models.

Directions (``directions.DIRECTIONS``): ``membership_z`` lower is better (less member-like; near
0 for exact retraining), ``membership_p_value`` higher, ``membership_power`` higher (a more
informative test).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm

from medunlearn.evaluation.privacy import logit_confidence
from medunlearn.evaluation.utility import softmax

PASS, FAIL, CANNOT_SAY = "pass", "fail", "cannot say"
REMEMBERED, FORGOTTEN = "looks remembered", "looks forgotten"
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_POWER = 0.8
MIN_CALIBRATION_IMAGES = 10  # fewer known-OUT or known-IN images: no calibration
VARIANCE_PRIOR = 4.0  # pseudo-observations shrinking each image's variance to the global one
FEATURES = ("1", "mu_out", "log_spread", "mu_out^2", "mu_out*log_spread")  # then, per class
# c > 0 with labels: "class=c", "class=c*mu_out"


def member_confidences(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Logit-scaled true-class confidences ``(K, n)`` from K models' logits ``(K, n, C)``."""
    lo = np.asarray(logits, dtype=np.float64)
    return np.stack([logit_confidence(softmax(x), labels) for x in lo])


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
    """Per-image summaries of the shadows' confidences, ``(n,)`` each (nan where undefined)."""

    mu_out: np.ndarray
    var_out: np.ndarray
    n_out: np.ndarray
    mu_in: np.ndarray
    var_in: np.ndarray
    n_in: np.ndarray

    @property
    def testable(self) -> np.ndarray:
        """Images with an IN shadow and at least two OUT shadows."""
        return (self.n_in > 0) & (self.n_out > 1)


def image_stats(conf: np.ndarray, member: np.ndarray) -> ImageStats:
    """Shadow summaries of n images from confidences ``(K, n)`` and membership ``(K, n)``.

    For images nobody trained on (validation, test), pass a pseudo membership (a balanced
    half of the shadows): those rows play IN and are ignored by the test, so the OUT means
    average as many shadows as a training image's.
    """
    c = np.asarray(conf, dtype=np.float64)
    m = np.asarray(member, dtype=bool)
    if c.shape != m.shape or c.ndim != 2:
        raise ValueError(f"confidences {c.shape} and membership {m.shape} must both be (K, n)")
    mu_out, var_out, n_out = _side(c, ~m)
    mu_in, var_in, n_in = _side(c, m)
    return ImageStats(mu_out, var_out, n_out, mu_in, var_in, n_in)


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


@dataclass(frozen=True)
class Globals:
    """The shadows' within-image OUT and IN variances pooled over the whole training split
    (so that a one-image request is scaled like any other)."""

    var_out: float
    var_in: float

    @classmethod
    def from_confidences(cls, conf: np.ndarray, member: np.ndarray) -> Globals:
        """From the shadows' confidences ``(K, N)`` and membership on the training split."""
        st = image_stats(conf, member)
        return cls(pooled_variance(st.var_out, st.n_out), pooled_variance(st.var_in, st.n_in))


def features(stats: ImageStats, globals_: Globals, labels: np.ndarray | None = None,
             num_classes: int | None = None) -> np.ndarray:
    """The per-image covariates ``(n, p)`` every decision is a function of (:data:`FEATURES`):
    1, the OUT mean ``m``, the log ``l`` of the OUT variance (shrunk towards the global one,
    relative to it), ``m^2`` and ``m l`` (how much the shadows' mean says about an image depends
    on their spread, and the logit scale bends at the extremes); with ``labels``, for every class
    but the first an indicator and its product with ``m`` (a model that leans towards one class
    is more confident on all its images and less on the others', for seen and unseen alike).
    """
    g = globals_.var_out if np.isfinite(globals_.var_out) and globals_.var_out > 0 else 1.0
    spread = shrunk_variance(stats.var_out, stats.n_out - 1, g) / g
    m, lg = stats.mu_out, np.log(np.maximum(spread, 1e-3))
    cols = [np.ones(len(m)), m, lg, m * m, m * lg]
    if labels is not None:
        y = np.asarray(labels)
        for c in range(1, int(num_classes or (y.max() + 1 if len(y) else 1))):
            cols += [(y == c).astype(np.float64), (y == c) * m]
    return np.stack(cols, axis=1)


def _lstsq(X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares with a heteroscedasticity-robust (sandwich) covariance; columns
    that are constant or collinear get coefficient 0 (minimum-norm solution)."""
    n, p = X.shape
    w = np.ones(n) if w is None else w
    sw = np.sqrt(w)
    beta, *_ = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)
    e = y - X @ beta
    bread = np.linalg.pinv(X.T @ (X * w[:, None]))
    meat = X.T @ (X * (w * w * e * e)[:, None])
    cov = bread @ meat @ bread * n / max(n - p, 1)
    return beta, cov, e


VARIANCE_FEATURES = 3  # the variance model uses the linear features only (1, m, l)
MAX_LOG_VARIANCE_RANGE = 4.0  # the variance model stays within e^+-4 of the mean variance


def _variance_model(Z: np.ndarray, e2: np.ndarray, iterations: int = 50) -> np.ndarray:
    """``E(e^2 | Z) = exp(Z gamma)``: a gamma regression with a log link, fitted by
    iteratively reweighted least squares (with a log link the working weights are 1) with step
    halving on the gamma deviance, predictions held within ``e^+-4`` of the mean variance."""
    mean = max(float(e2.mean()), 1e-12)
    lo, hi = np.log(mean) - MAX_LOG_VARIANCE_RANGE, np.log(mean) + MAX_LOG_VARIANCE_RANGE
    e2 = np.maximum(e2, 1e-12 * mean)

    def deviance(g):
        mu = np.exp(np.clip(Z @ g, lo, hi))
        return float((e2 / mu - np.log(e2 / mu) - 1).sum())

    gamma = np.zeros(Z.shape[1])
    gamma[0] = np.log(mean)
    dev = deviance(gamma)
    for _ in range(iterations):
        eta = np.clip(Z @ gamma, lo, hi)
        mu = np.exp(eta)
        new, *_ = np.linalg.lstsq(Z, eta + (e2 - mu) / mu, rcond=None)
        step = new - gamma
        for _ in range(30):
            if (d := deviance(gamma + step)) <= dev:
                break
            step = step / 2
        else:
            break
        gamma, done = gamma + step, dev - d < 1e-9 * max(dev, 1.0)
        dev = d
        if done:
            break
    return gamma


NONLINEAR = (3, 4)  # feature columns held to their fitted range (no quadratic extrapolation)


@dataclass(frozen=True)
class OutModel:
    """The candidate on images it never saw: ``phi = X beta + e``, ``Var(e) = exp(Z gamma)``
    with ``Z`` the linear features (1, m, l)
    (:func:`fit_out_model`); ``cov`` is the covariance of ``beta``. Outside the range of the
    images it was fitted on, the nonlinear features are held at their range and the variance
    at its fitted extremes, so a far-out image is extrapolated linearly, not quadratically."""

    beta: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]
    gamma: tuple[float, ...]
    n: int
    lo: tuple[float, ...] = ()
    hi: tuple[float, ...] = ()
    eta_range: tuple[float, float] = (-np.inf, np.inf)

    def _x(self, X: np.ndarray) -> np.ndarray:
        X = np.array(X, dtype=np.float64)
        if self.lo:
            for j in NONLINEAR:
                if j < X.shape[1]:
                    X[:, j] = np.clip(X[:, j], self.lo[j], self.hi[j])
        return X

    def mean(self, X: np.ndarray) -> np.ndarray:
        return self._x(X) @ np.asarray(self.beta)

    def variance(self, X: np.ndarray) -> np.ndarray:
        Z = self._x(X)[:, :len(self.gamma)]
        return np.exp(np.clip(Z @ np.asarray(self.gamma), *self.eta_range))

    def mean_var(self, X: np.ndarray) -> np.ndarray:
        """Variance of the fitted mean at each row of ``X`` (the model's own uncertainty)."""
        X = self._x(X)
        return np.einsum("ij,jk,ik->i", X, np.asarray(self.cov), X)

    def to_dict(self) -> dict:
        return {"features": list(FEATURES) + ["class terms"] * (len(self.beta) - len(FEATURES)),
                "beta": list(self.beta),
                "cov": [list(r) for r in self.cov], "gamma": list(self.gamma), "n": self.n,
                "range": [list(self.lo), list(self.hi)], "log_variance_range":
                list(self.eta_range)}


def fit_out_model(X: np.ndarray, y: np.ndarray, *, nonlinear: bool = True
                  ) -> OutModel | None:
    """Least squares of the candidate's confidences ``y`` on the features ``X`` of images it
    never saw, then a log-linear model of the squared residuals' mean.

    ``nonlinear``: whether ``X`` holds the quadratic columns :data:`NONLINEAR` (held to their
    fitted range when predicting). Returns None with fewer than :data:`MIN_CALIBRATION_IMAGES`
    finite rows.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(X).all(axis=1) & np.isfinite(y)
    X, y = X[ok], y[ok]
    if len(y) < MIN_CALIBRATION_IMAGES:
        return None
    beta, cov, e = _lstsq(X, y)
    Z = X[:, :VARIANCE_FEATURES]
    gamma = _variance_model(Z, e * e * len(y) / max(len(y) - X.shape[1], 1))
    eta = Z @ gamma
    lo, hi = (tuple(map(float, X.min(axis=0))), tuple(map(float, X.max(axis=0)))) \
        if nonlinear else ((), ())
    return OutModel(tuple(map(float, beta)), tuple(tuple(map(float, r)) for r in cov),
                    tuple(map(float, gamma)), len(y), lo, hi,
                    (float(eta.min()), float(eta.max())))


@dataclass(frozen=True)
class InResponse:
    """How far above its OUT model the candidate's confidence sits on images it was trained
    on: ``r ~ N(X theta, kappa V)`` (:func:`fit_in_response`); ``cov`` of ``theta``."""

    theta: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]
    kappa: float
    n: int

    def mean(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X) @ np.asarray(self.theta)

    def to_dict(self) -> dict:
        return {"features": list(FEATURES) + ["class terms"] * (len(self.theta) - len(FEATURES)),
                "theta": list(self.theta),
                "cov": [list(r) for r in self.cov], "kappa": self.kappa, "n": self.n}


def fit_in_response(X: np.ndarray, r: np.ndarray, V: np.ndarray) -> InResponse | None:
    """Weighted least squares (weights ``1 / V``) of the residuals ``r`` of the candidate's
    retained images (IN for it) on their features: the test's alternative, measured on the
    candidate itself, whatever its architecture, data size or calibration. ``kappa`` is the
    residual variance relative to ``V``. None with fewer than
    :data:`MIN_CALIBRATION_IMAGES` rows."""
    X, r, V = (np.asarray(a, dtype=np.float64) for a in (X, r, V))
    ok = np.isfinite(X).all(axis=1) & np.isfinite(r) & np.isfinite(V) & (V > 0)
    X, r, V = X[ok], r[ok], V[ok]
    n = len(r)
    if n < MIN_CALIBRATION_IMAGES:
        return None
    theta, cov, e = _lstsq(X, r, 1.0 / V)
    kappa = float((e * e / V).sum() / max(n - X.shape[1], 1))
    return InResponse(tuple(map(float, theta)), tuple(tuple(map(float, row)) for row in cov),
                      kappa, n)


def power(z_if_member: float, sd_ratio: float, alpha: float) -> float:
    """Chance that the one-sided test at level ``alpha`` rejects when its statistic is
    ``N(z_if_member, sd_ratio^2)`` (a remembered request)."""
    if not (np.isfinite(z_if_member) and np.isfinite(sd_ratio)) or sd_ratio <= 0:
        return float("nan")
    return float(norm.sf((norm.isf(alpha) - z_if_member) / sd_ratio))


@dataclass(frozen=True)
class Calibration:
    """One fold's calibration of the candidate: its OUT model and its IN response."""

    out: OutModel
    response: InResponse


def membership_test(phi: np.ndarray, X: np.ndarray, ok: np.ndarray, *,
                    folds: tuple[Calibration, Calibration], offset_var: float = 0.0,
                    alpha: float = DEFAULT_ALPHA, min_power: float = DEFAULT_MIN_POWER) -> dict:
    """Per-image evidence and the request's aggregate test, cross-fitted over two folds.

    The calibration images are split in two folds A and B, each with its own OUT model
    ``(beta_f, gamma_f, C_f)`` and IN response ``theta_f`` (fitted against that OUT model).
    Per testable image and fold: residual ``r_f = phi - X beta_f``, expected response
    ``m_f = X theta_f``, variance ``V_f = exp(Z gamma_f) + X C_f X' + t2`` and weight
    ``w_f = m_f / V_f`` (the Gaussian log likelihood ratio's slope). Each fold's residual is
    weighted by the *other* fold's weight,

        ``S = sum_i (w_B r_A + w_A r_B)``,

    so that no weight shares the estimation error of the OUT model it multiplies (a response
    fitted against an OUT model absorbs that model's error, which would otherwise raise ``S``
    for a model that never saw the images). Under H0 (never seen) ``S`` has mean 0 and
    variance ``sum (w_A + w_B)^2 (v + t2') + q_B' C_A q_B + q_A' C_B q_A`` (``v`` the mean of the
    two variance models, ``q_f = sum_i w_f X_i``, ``t2' `` the model offset variance ``t2``,
    shared by all images: ``t2 (sum (w_A + w_B))^2``); ``z = S / sd0``, ``p = P(N(0, 1) >= z)``.
    Under H1 (remembered as the candidate remembers its retained images) ``E(S) =
    sum (w_A + w_B) m`` with ``m`` the mean response, less one standard error of that fitted
    value (so the power is not overstated), and the variance scales by the response's
    dispersion ``kappa``. A one-image request is exactly its image's row of ``images``.

    Args:
        phi: ``(n,)`` the candidate's confidences on the request's images.
        X: ``(n, p)`` their :func:`features`.
        ok: ``(n,)`` testable images (:attr:`ImageStats.testable`).
        folds: The two folds' :class:`Calibration`.
        offset_var: ``t2``, the variance of a model's own offset between the training pool
            and the calibration images (:func:`model_offset_variance`).
        alpha: Level of the one-sided test.
        min_power: Below this power a request (or an image) is "cannot say".

    Returns:
        ``{"status", "reason", "z", "p_value", "log_lr", "z_if_member", "sd_ratio", "power",
        "n_images", "n_tested", "n_no_shadow", "alpha", "min_power", "images"}``; ``status``
        is "fail" (``p_value < alpha``: member-like), "pass", or "cannot say" (no testable
        image, or power below ``min_power``); ``images`` holds per-image arrays.
    """
    phi = np.asarray(phi, dtype=np.float64)
    n = len(phi)
    ok = np.asarray(ok, dtype=bool) & np.isfinite(phi) & np.isfinite(X).all(axis=1)
    Xs = np.where(ok[:, None], X, 0.0)
    t2 = max(float(offset_var), 0.0)
    (a, b) = folds
    r = [phi - c.out.mean(Xs) for c in folds]
    v = [c.out.variance(Xs) for c in folds]
    mv = [c.out.mean_var(Xs) for c in folds]
    m = [c.response.mean(Xs) for c in folds]
    w = [m[f] / (v[f] + mv[f] + t2) for f in (0, 1)]
    vbar = (v[0] + v[1]) / 2
    kappa = max((a.response.kappa + b.response.kappa) / 2, 1e-12)
    mbar = (m[0] + m[1]) / 2
    ws = w[0] + w[1]
    s_i = w[1] * r[0] + w[0] * r[1]
    var0_i = ws ** 2 * (vbar + t2) + w[1] ** 2 * mv[0] + w[0] ** 2 * mv[1]
    var1_i = ws ** 2 * (kappa * vbar + t2) + w[1] ** 2 * mv[0] + w[0] ** 2 * mv[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        z_i = s_i / np.sqrt(var0_i)
        zmem_i = ws * mbar / np.sqrt(var0_i)
        pow_i = norm.sf((norm.isf(alpha) - zmem_i) / np.sqrt(var1_i / var0_i))
    p_i = norm.sf(z_i)
    # per image, for reading: the mean expectation if unseen and if remembered, and the
    # Gaussian log likelihood ratio of the confidence under the two
    unseen = phi - (r[0] + r[1]) / 2
    V = vbar + (mv[0] + mv[1]) / 2 + t2
    llr = (norm.logpdf(phi, unseen + mbar, np.sqrt(kappa * V))
           - norm.logpdf(phi, unseen, np.sqrt(V)))
    decided = ok & (pow_i >= min_power)
    status_i = np.where(~decided, CANNOT_SAY, np.where(p_i < alpha, REMEMBERED, FORGOTTEN))

    def masked(x):
        return np.where(ok, x, np.nan)

    images = {"confidence": phi, "expected_if_unseen": masked(unseen),
              "expected_if_member": masked(unseen + mbar), "z": masked(z_i),
              "p_value": masked(p_i), "log_lr": masked(llr), "power": masked(pow_i),
              "status": status_i}
    out = {"n_images": n, "n_tested": int(ok.sum()), "n_no_shadow": int((~ok).sum()),
           "alpha": alpha, "min_power": min_power, "images": images}
    none = {"z": None, "p_value": None, "z_if_member": None, "sd_ratio": None, "power": None,
            "status": CANNOT_SAY}
    if not ok.any():
        return out | none | {"log_lr": None, "reason": "no image has an IN shadow model and "
                                                       "two OUT shadow models"}
    k = ok
    q = [(w[f][k][:, None] * Xs[k]).sum(axis=0) for f in (0, 1)]
    cal = float(q[1] @ np.asarray(a.out.cov) @ q[1] + q[0] @ np.asarray(b.out.cov) @ q[0])
    shared = t2 * float(ws[k].sum()) ** 2
    var0 = float((ws[k] ** 2 * vbar[k]).sum()) + cal + shared
    var1 = float((ws[k] ** 2 * kappa * vbar[k]).sum()) + cal + shared
    if not var0 > 0:
        return out | none | {"log_lr": float(llr[k].sum()), "z_if_member": 0.0, "power": 0.0,
                             "reason": "the candidate's retained images sit no higher than "
                                       "unseen ones: nothing to tell them apart by"}
    sd0 = float(np.sqrt(var0))
    z = float(s_i[k].sum() / sd0)
    d = (ws[k][:, None] * Xs[k]).sum(axis=0) / 2
    se1 = float(np.sqrt(max(d @ (np.asarray(a.response.cov) + np.asarray(b.response.cov)) @ d,
                            0.0)))
    z_mem = max(float((ws[k] * mbar[k]).sum()) - se1, 0.0) / sd0
    ratio = float(np.sqrt(var1 / var0))
    p = float(norm.sf(z))
    pw = power(z_mem, ratio, alpha)
    n_ok = int(k.sum())
    if not pw >= min_power:
        status, reason = CANNOT_SAY, (
            f"the test's power is {pw:.2f} (< {min_power:g}): on these {n_ok} image(s) the "
            "candidate's remembered and unseen images look too much alike (too few images, or "
            "images the model barely memorises)")
    elif p < alpha:
        status, reason = FAIL, (f"z = {z:.2f}, p = {p:.3g} < {alpha:g}: the images still look "
                                "like members")
    else:
        status, reason = PASS, f"z = {z:.2f}, p = {p:.3g} >= {alpha:g}, power {pw:.2f}"
    return out | {"z": z, "p_value": p, "log_lr": float(llr[k].sum()), "z_if_member": z_mem,
                  "sd_ratio": ratio, "power": pw, "status": status, "reason": reason}


SMALL_FOLD = 100  # folds with fewer calibration images drop the quadratic features


def calibration_folds(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The two folds of ``n`` calibration images (a fixed seeded split, the same every run)."""
    order = np.random.default_rng(0).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def membership_evidence(*, target: np.ndarray, target_conf: np.ndarray, target_member: np.ndarray,
                        known_out: np.ndarray, known_out_conf: np.ndarray,
                        known_out_member: np.ndarray, known_in: np.ndarray,
                        known_in_conf: np.ndarray, known_in_member: np.ndarray,
                        globals_: Globals, labels: tuple[np.ndarray, np.ndarray, np.ndarray]
                        | None = None, num_classes: int | None = None,
                        offset_var: float = 0.0, alpha: float = DEFAULT_ALPHA,
                        min_power: float = DEFAULT_MIN_POWER) -> dict:
    """Everything from arrays: calibrate the candidate (two folds), then test the request.

    Args:
        target: ``(F,)`` the candidate's confidences on the request's (forgotten) images.
        target_conf, target_member: ``(K, F)`` shadow confidences and membership of them.
        known_out: ``(V,)`` the candidate's confidences on images nobody trained on.
        known_out_conf, known_out_member: ``(K, V)`` shadow confidences and a pseudo
            membership (a balanced half of the shadows, ignored; see :func:`image_stats`).
        known_in: ``(R,)`` the candidate's confidences on its retained training images.
        known_in_conf, known_in_member: ``(K, R)`` shadow confidences and membership.
        globals_: Pooled variances over the whole training split (:class:`Globals`).
        labels: The labels of the target, known-OUT and known-IN images (class features;
            None: none).
        num_classes: Number of classes (default: from the labels).
        offset_var, alpha, min_power: See :func:`membership_test`.

    Returns:
        :func:`membership_test`'s dict plus ``k``, ``calibration`` (each fold's OUT model and
        IN response) and, per image, the shadows' own IN and OUT means.
    """
    k = int(np.asarray(target_conf).shape[0])
    ly = (None, None, None) if labels is None else labels
    if labels is not None and num_classes is None:
        num_classes = int(max(int(np.max(y)) for y in labels if len(y)) + 1)
    known_out = np.asarray(known_out, dtype=np.float64)
    o_stats = image_stats(known_out_conf, known_out_member)
    i_stats = image_stats(known_in_conf, known_in_member)
    t_stats = image_stats(target_conf, target_member)
    fold_idx = calibration_folds(len(known_out))
    cols = None
    if min(len(f) for f in fold_idx) < SMALL_FOLD:  # few images: linear features only
        cols = [j for j in range(len(FEATURES) + 2 * max((num_classes or 1) - 1, 0))
                if j not in NONLINEAR]

    def feats(st, y):
        X = features(st, globals_, y, num_classes)
        return X if cols is None else X[:, cols]

    Xo, Xi, Xt = feats(o_stats, ly[1]), feats(i_stats, ly[2]), feats(t_stats, ly[0])
    folds = []
    for idx in fold_idx:
        om = fit_out_model(Xo[idx], known_out[idx], nonlinear=cols is None)
        ir = None
        if om is not None:
            keep = i_stats.testable & np.isfinite(Xi).all(axis=1)
            ri = np.asarray(known_in, dtype=np.float64)[keep] - om.mean(Xi[keep])
            ir = fit_in_response(Xi[keep], ri,
                                 om.variance(Xi[keep]) + om.mean_var(Xi[keep]) + offset_var)
        if om is None or ir is None:
            which = "unseen (validation/test)" if om is None else "retained training"
            return {"status": CANNOT_SAY, "k": k, "n_images": len(target), "n_tested": 0,
                    "reason": f"too few {which} images to calibrate the candidate on (at least "
                              f"{2 * MIN_CALIBRATION_IMAGES} unseen and "
                              f"{MIN_CALIBRATION_IMAGES} retained)", "z": None,
                    "p_value": None, "power": None, "z_if_member": None, "sd_ratio": None,
                    "calibration": None, "alpha": alpha, "min_power": min_power}
        folds.append(Calibration(om, ir))
    res = membership_test(target, Xt, t_stats.testable, folds=(folds[0], folds[1]),
                          offset_var=offset_var, alpha=alpha, min_power=min_power)
    res["images"]["shadow_mean_out"] = t_stats.mu_out
    res["images"]["shadow_mean_in"] = t_stats.mu_in
    res["k"] = k
    res["calibration"] = {"folds": [{"out": c.out.to_dict(), "in_response":
                                     c.response.to_dict()} for c in folds],
                          "calibration_images": len(known_out),
                          "globals": asdict(globals_), "offset_var": offset_var}
    return res


def model_offset_variance(conf: np.ndarray, member: np.ndarray, known_out_conf: np.ndarray,
                          known_out_member: np.ndarray, *, labels: np.ndarray | None = None,
                          known_out_labels: np.ndarray | None = None,
                          num_classes: int | None = None) -> dict:
    """How far a model's own offset between training-pool images and the calibration images
    varies from model to model, measured on the shadows themselves (leave one out).

    Each shadow in turn plays a candidate: its OUT model is fitted on the calibration images
    (features from the other shadows), and its precision-weighted mean residual over *all* the
    training images it never saw is a measurement of its offset. The method-of-moments
    variance of those means, less their sampling variance, is ``t2`` (0 when the spread is no
    more than sampling noise). It widens every request's test for a model-level offset that no
    feature captures (:func:`membership_test` ``offset_var``).

    Args:
        conf, member: ``(K, N)`` the shadows' confidences and membership on the training split.
        known_out_conf, known_out_member: ``(K, V)`` on the calibration images, with their
            pseudo membership.
        labels, known_out_labels, num_classes: Class features (see :func:`features`).

    Returns:
        ``{"offset_var", "mean_offset", "offsets", "sampling_var"}`` (offsets per shadow, in
        confidence units; ``mean_offset`` is reported, not corrected for).
    """
    conf = np.asarray(conf, dtype=np.float64)
    member = np.asarray(member, dtype=bool)
    k = conf.shape[0]
    offsets, samp = [], []
    for j in range(k):
        keep = np.arange(k) != j
        g = Globals.from_confidences(conf[keep], member[keep])
        o_stats = image_stats(known_out_conf[keep], known_out_member[keep])
        om = fit_out_model(features(o_stats, g, known_out_labels, num_classes),
                           known_out_conf[j])
        out = np.flatnonzero(~member[j])
        if om is None or len(out) < MIN_CALIBRATION_IMAGES:
            continue
        t_stats = image_stats(conf[keep][:, out], member[keep][:, out])
        X = features(t_stats, g, None if labels is None else np.asarray(labels)[out],
                     num_classes)
        ok = t_stats.testable & np.isfinite(X).all(axis=1)
        if ok.sum() < MIN_CALIBRATION_IMAGES:  # e.g. K = 4: one OUT shadow left per image
            continue
        Xs = X[ok]
        r = conf[j, out][ok] - om.mean(Xs)
        V = om.variance(Xs) + om.mean_var(Xs)
        prec = 1.0 / V
        offsets.append(float((prec * r).sum() / prec.sum()))
        # sampling variance of that mean: independent images plus the fitted intercept's
        q = prec / prec.sum()
        qx = (q[:, None] * Xs).sum(axis=0)
        samp.append(float((q * q * om.variance(Xs)).sum() + qx @ np.asarray(om.cov) @ qx))
    if len(offsets) < 3:
        return {"offset_var": 0.0, "mean_offset": None, "offsets": offsets,
                "sampling_var": None}
    o = np.asarray(offsets)
    sv = float(np.mean(samp))
    return {"offset_var": float(max(o.var(ddof=1) - sv, 0.0)), "mean_offset": float(o.mean()),
            "offsets": offsets, "sampling_var": sv}

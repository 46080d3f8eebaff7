"""Per-image statistics of shadow models' confidences and the candidate's fitted OUT model and
IN response: the building blocks of :mod:`medunlearn.evaluation.membership` (pure numpy).

:func:`member_confidences` turns K shadows' logits into LiRA's logit-scaled confidences,
:func:`image_stats` summarises each image's IN and OUT confidences, :func:`features` describes
an image by its OUT mean and spread, :func:`fit_out_model` fits the candidate's confidence on
images it never saw (with a log-linear variance) and :func:`fit_in_response` how far above that
model a remembered image sits. See :mod:`medunlearn.evaluation.membership` for the test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medunlearn.evaluation.privacy import logit_confidence
from medunlearn.evaluation.utility import softmax

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


__all__ = ["FEATURES", "Globals", "ImageStats", "InResponse", "MIN_CALIBRATION_IMAGES",
           "NONLINEAR", "OutModel", "VARIANCE_PRIOR", "features", "fit_in_response",
           "fit_out_model", "image_stats", "member_confidences", "pooled_variance",
           "shrunk_variance"]

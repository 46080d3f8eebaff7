"""Per-image membership evidence from shadow models, calibrated per candidate (pure numpy/scipy).

K shadow models are trained once with the model's own recipe on balanced random halves of the
training split (:mod:`medunlearn.evaluation.companions`; stored by :mod:`medunlearn.runs.shadows`),
so every training image is IN (trained on) for about half of them and OUT for the rest. As in
LiRA (Carlini et al., S&P 2022) and U-LiRA (Hayes et al., SaTML 2025) the statistic is the
logit-scaled true-class confidence
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

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm

from medunlearn.errors import ConfigError
from medunlearn.evaluation.companions import SHADOW, SPLITS, CompanionSet, balanced_halves
from medunlearn.evaluation.membership_paired import paired_section
from medunlearn.evaluation.membership_stats import (
    FEATURES,
    MIN_CALIBRATION_IMAGES,
    NONLINEAR,
    VARIANCE_PRIOR,
    Globals,
    ImageStats,
    InResponse,
    OutModel,
    features,
    fit_in_response,
    fit_out_model,
    image_stats,
    member_confidences,
    pooled_variance,
    shrunk_variance,
)
from medunlearn.evaluation.privacy import logit_confidence

PASS, FAIL, CANNOT_SAY = "pass", "fail", "cannot say"
REMEMBERED, FORGOTTEN = "looks remembered", "looks forgotten"
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_POWER = 0.8


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


# ------------------------------------------------------------------------------ a shadow set's
# evidence on one candidate (a CompanionSet in memory: medunlearn.evaluation.companions)


def pseudo_member(cs: CompanionSet, split: str) -> np.ndarray:
    """A balanced pseudo membership of a split nobody trained on: its IN rows are ignored,
    so that each image's OUT means average as many shadows as a training image's."""
    n = cs.logits[split].shape[1]
    code = SPLITS.index(split) + 1
    return balanced_halves(n, cs.k, seed=int(cs.manifest["base_seed"]) * 10 + code)


def _globals(cs: CompanionSet):
    if "globals" not in cs._cache:
        cs._cache["globals"] = Globals.from_confidences(cs.confidences("train"), cs.membership)
    return cs._cache["globals"]


def model_offset(cs: CompanionSet, known_out: Sequence[str] = ("val",)) -> dict:
    """:func:`model_offset_variance` of a shadow set, computed once per set and calibration
    split (kept in ``cs``; :func:`medunlearn.runs.shadows.load_companions` restores the value
    stored in the set's folder)."""
    key = ("offset", tuple(known_out))
    if key not in cs._cache:
        cs._cache[key] = model_offset_variance(
            cs.confidences("train"), cs.membership,
            np.concatenate([cs.confidences(s) for s in known_out], axis=1),
            np.concatenate([pseudo_member(cs, s) for s in known_out], axis=1),
            labels=cs.labels("train"),
            known_out_labels=np.concatenate([cs.labels(s) for s in known_out]),
            num_classes=int(cs.logits["train"].shape[2]))
    return cs._cache[key]


MIN_VALIDATION = 200  # with fewer validation images the test split calibrates too


def calibration_splits(cs: CompanionSet) -> tuple[str, ...]:
    """The splits nobody trained on that calibrate a candidate: the validation split (from
    the training pool), plus the test split when it has fewer than :data:`MIN_VALIDATION`
    images (e.g. the TB set's 80)."""
    return ("val",) if cs.logits["val"].shape[1] >= MIN_VALIDATION else ("val", "test")


def membership_section(cs: CompanionSet, outputs, *, forget: np.ndarray, retain: np.ndarray,
                       known_out: Sequence[str] | None = None, alpha: float | None = None,
                       min_power: float | None = None) -> dict:
    """The membership evidence of one candidate on its forget set, as a record section.

    Args:
        cs: The shadow set (kind ``shadow``).
        outputs: The candidate's outputs on ``forget``, ``retain``, ``val`` and ``test``
            (:func:`medunlearn.evaluation.outputs.model_outputs`), already computed by the
            verification: nothing runs a network here.
        forget, retain: Training indices of those outputs' forget and retain rows.
        known_out: Splits nobody trained on, to calibrate the candidate's OUT behaviour
            (default: :func:`calibration_splits`).
        alpha, min_power: The test's level and the power below which it says "cannot say".

    Returns:
        :func:`medunlearn.evaluation.membership.membership_evidence`'s dict with per-image rows
        (index, SHA-256, numbers, status) under ``images``.
    """
    if cs.kind != SHADOW:
        raise ConfigError(f"{cs.path} holds {cs.kind} models; membership evidence needs shadow "
                          "models on random halves ('medunlearn shadows RUN').")
    forget = np.asarray(forget, dtype=np.int64)
    retain = np.asarray(retain, dtype=np.int64)
    known_out = tuple(known_out or calibration_splits(cs))

    def phi(o):
        return logit_confidence(o.probs, o.labels)

    ko = np.concatenate([phi(outputs[s]) for s in known_out])
    ko_conf = np.concatenate([cs.confidences(s) for s in known_out], axis=1)
    ko_mem = np.concatenate([pseudo_member(cs, s) for s in known_out], axis=1)
    res = membership_evidence(
        target=phi(outputs["forget"]), target_conf=cs.confidences("train", forget),
        target_member=cs.membership[:, forget], known_out=ko, known_out_conf=ko_conf,
        known_out_member=ko_mem, known_in=phi(outputs["retain"]),
        known_in_conf=cs.confidences("train", retain), known_in_member=cs.membership[:, retain],
        globals_=_globals(cs), labels=(outputs["forget"].labels, np.concatenate(
            [outputs[s].labels for s in known_out]), outputs["retain"].labels),
        num_classes=int(cs.logits["train"].shape[2]),
        offset_var=model_offset(cs, known_out)["offset_var"],
        alpha=DEFAULT_ALPHA if alpha is None else alpha,
        min_power=DEFAULT_MIN_POWER if min_power is None else min_power)
    images = res.pop("images", None)
    if images is not None:
        rows = []
        for j, i in enumerate(forget.tolist()):
            row = {"index": i, "sha256": cs.train_hashes[i]}
            for key, arr in images.items():
                val = arr[j]
                row[key] = str(val) if key == "status" else (
                    float(val) if np.isfinite(val) else None)
            rows.append(row)
        res["images"] = rows
    res["known_out"] = list(known_out)
    res["assumption"] = (f"given their shadow features, the forgotten images behave for a model "
                         f"that never saw them like the {' and '.join(known_out)} images (true "
                         "for images drawn at random from the training pool)")
    return res


def not_run_reason(rebuild: str | None = None) -> str:
    """Why the membership evidence is missing from a record, with the command that adds it."""
    how = (f"'{rebuild}'" if rebuild else "'medunlearn shadows ORIGINAL_RUN --k 16'; in "
           "Python medunlearn.runs.shadows.train_shadows(original, data, out=DIR)")
    return (f"not run: no shadow models given. Train them once for the original model ({how})"
            " and pass --shadows (evaluate) or shadows= (medunlearn.evaluate)")


def attach_membership(record: dict, outs, cs: CompanionSet | None, *, forget: np.ndarray,
                      retain: np.ndarray, rebuild: str | None = None) -> dict:
    """Add every evaluated model's membership section to an evaluation record
    (``models.<role>.membership``) and, when the original is among ``outs``, every other
    model's paired test against it (``models.<role>.forget_effect``:
    :mod:`medunlearn.evaluation.membership_paired`), and describe the shadow set
    (``membership``); without a set, record why the check did not run and the command that
    enables it (``skipped``).

    ``outs``: role -> outputs, as given to ``evaluate_outputs``. Returns ``record``.
    """
    if cs is None:
        record.setdefault("skipped", {})["membership"] = not_run_reason(rebuild)
        return record
    t0 = time.perf_counter()
    done: dict[int, dict] = {}
    for role, o in outs.items():
        if id(o) not in done:
            done[id(o)] = membership_section(cs, o, forget=forget, retain=retain)
        if record["models"].get(role) is not None:
            record["models"][role]["membership"] = done[id(o)]
            if "original" in outs and role != "original":  # the paired test needs it
                record["models"][role]["forget_effect"] = paired_section(
                    cs, o, outs["original"], forget=forget, retain=retain)
    record["membership"] = {"path": str(cs.path), "k": cs.k, "kind": cs.kind,
                            "fingerprint": cs.manifest["fingerprint"],
                            "source": cs.manifest.get("source"),
                            "seconds": time.perf_counter() - t0}
    return record


__all__ = ["CANNOT_SAY", "Calibration", "DEFAULT_ALPHA", "DEFAULT_MIN_POWER", "FAIL",
           "FEATURES", "FORGOTTEN", "Globals", "ImageStats", "InResponse",
           "MIN_CALIBRATION_IMAGES", "NONLINEAR", "OutModel", "PASS", "REMEMBERED",
           "VARIANCE_PRIOR", "attach_membership", "calibration_folds", "calibration_splits",
           "features", "fit_in_response", "fit_out_model", "image_stats", "member_confidences",
           "membership_evidence", "membership_section", "membership_test", "model_offset",
           "model_offset_variance", "not_run_reason", "pooled_variance", "power",
           "pseudo_member", "shrunk_variance"]

"""Per-example forgetting quality from many unlearned and many retrained models (numpy only).

The NeurIPS 2023 Machine Unlearning Challenge scored forgetting per example (Triantafillou et
al., "Machine Unlearning Competition" metric, public code google-deepmind/unlearning_evaluation,
``metric.py``). This module re-implements that definition in numpy (the reference needs CUDA):

1. **Score per model and example**: the logit-scaled confidence of the true class,
   ``log p_y - log(sum_{k != y} p_k)`` (:func:`medunlearn.evaluation.privacy.logit_confidence`).
2. **Epsilon per example** (:func:`example_epsilon`): the N unlearned and N retrained scores of
   one forget example are two samples. The "positive" sample is the one with the larger median.
   If one sample is far peakier than the other (range ratio below 1%, e.g. a method that
   returns the same model every time) epsilon is the cap, 50. Otherwise two families of
   threshold attacks are scanned on the challenge's grid (100 thresholds per unit):

   * single threshold ``t`` (``score >= t`` predicts positive), ``t`` spanning both samples;
   * double threshold ``[l, r]`` (inside predicts the *peakier* sample), right ends from
     ``min + width - 2`` to ``max + 2`` of the peakier sample, left ends within 2 of
     ``r - width`` (``width`` = the peakier sample's range).

   For each attack with false-positive rate ``fpr`` and false-negative rate ``fnr``:
   ``eps = max(log(1 - delta - fpr) - log(fnr), log(1 - delta - fnr) - log(fpr))`` clipped at 0
   (the (eps, delta)-DP hypothesis-testing bound, ``delta = 1e-5``); an attack with
   ``fpr = fnr = 0`` separates the samples perfectly (eps = inf); an attack with exactly one of
   them 0 is discarded (too few samples to estimate it). Epsilon is the largest over attacks,
   clipped to [0, 50].
3. **Forgetting quality** (:func:`forgetting_score`): examples are bucketed by epsilon in steps
   of 0.5 up to ``ceil(log(N - 1))`` (the largest epsilon N samples can show); the first bucket
   earns 1 point, each next one half as much, beyond the last 0. The score is the mean over
   forget examples: 1 = every example indistinguishable from retraining, 0 = all exposed.
4. **Final score** (:func:`adjusted_score`): ``score * (RA_u / RA_r) * (TA_u / TA_r)`` with mean
   retain and test accuracies of the unlearned and retrained models.

Edge cases the reference leaves undefined (it divides 0 by 0 or asserts): two constant samples
of the same value give epsilon 0, of different values the cap; an example where no attack on the
grid survives gets the cap (conservative).

U-LiRA (Hayes et al. 2024, "Inexact unlearning needs more careful evaluations", Sec. 4): fit a
Gaussian to the unlearned and one to the retrained scores of an example and classify a model as
unlearned when its likelihood ratio exceeds 1. :func:`ulira` runs this leave-one-out over the 2N
models of each example: per-example balanced attack accuracy (0.5 = indistinguishable, 1 = every
model told apart) and the log likelihood ratio of the first unlearned model (the one a user
deploys) against Gaussians fitted without it.

The protocol both the in-memory check (:func:`medunlearn.api.forgetting_quality`) and the run
folder check (``medunlearn verify-forgetting``) follow: :func:`check_n` and :func:`seeds`; and how
a result enters an evaluation record: :func:`record_section`, :func:`attach_to_record`,
:func:`examples_for`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from medunlearn.errors import ConfigError

DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
PEAKY_RATIO = 0.01  # range ratio below which the peakier sample counts as a point mass
_BUFFER = 2.0  # how far the double-threshold grid reaches beyond the peakier sample


def _rate_eps(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """Epsilon of each attack (nan for discarded attacks, inf for perfect separation)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    fnr = np.asarray(fnr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(1 - delta - fpr) - np.log(fnr)
        b = np.log(1 - delta - fnr) - np.log(fpr)
        both_nan = np.isnan(a) & np.isnan(b)
        eps = np.fmax(a, b)  # fmax ignores a nan in one of them
    eps = np.where(both_nan, np.nan, np.clip(eps, 0, None))
    eps = np.where((fpr == 0) ^ (fnr == 0), np.nan, eps)
    return np.where((fpr == 0) & (fnr == 0), np.inf, eps)


def _grid(lo: float, hi: float) -> np.ndarray:
    """The challenge's threshold grid: ``ceil((hi - lo) * 100)`` evenly spaced values."""
    return np.linspace(lo, hi, int(math.ceil((hi - lo) * THRESHOLDS_PER_UNIT)))


def _count_ge(sorted_x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return len(sorted_x) - np.searchsorted(sorted_x, t, side="left")


def _count_between(sorted_x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many values lie in ``[lo, hi]`` (closed, as the reference's ``le`` tests)."""
    return np.clip(np.searchsorted(sorted_x, hi, side="right")
                   - np.searchsorted(sorted_x, lo, side="left"), 0, None)


def single_threshold_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, fnr)`` of every single-threshold attack ``score >= t`` -> positive."""
    pos, neg = np.sort(pos), np.sort(neg)
    both = np.concatenate([pos, neg])
    t = _grid(float(both.min()), float(both.max()))
    tpr = _count_ge(pos, t) / len(pos)
    fpr = _count_ge(neg, t) / len(neg)
    return fpr, 1 - tpr


def double_threshold_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, fnr)`` of every two-threshold attack ``l <= score <= r`` -> the peakier sample
    (which plays the positive role here, whatever the median rule chose)."""
    if np.ptp(pos) >= np.ptp(neg):
        pos, neg = neg, pos
    pos, neg = np.sort(pos), np.sort(neg)
    width = float(np.ptp(pos))
    right = _grid(float(pos.min()) + width - _BUFFER, float(pos.max()) + _BUFFER)
    n_left = int(math.ceil(2 * _BUFFER * THRESHOLDS_PER_UNIT))
    offsets = np.linspace(-width - _BUFFER, -width + _BUFFER, n_left)
    r = np.repeat(right, n_left)
    left = r + np.tile(offsets, len(right))
    tpr = _count_between(pos, left, r) / len(pos)
    fpr = _count_between(neg, left, r) / len(neg)
    return fpr, 1 - tpr


def is_peaky(unlearned: np.ndarray, retrained: np.ndarray) -> bool:
    """Whether the challenge's point-mass rule decides an example: one sample's range is below
    1% of the other's (two constant samples of different values included)."""
    a, b = np.ptp(np.asarray(unlearned, np.float64)), np.ptp(np.asarray(retrained, np.float64))
    largest, smallest = max(a, b), min(a, b)
    if largest == 0:
        return bool(np.asarray(unlearned).flat[0] != np.asarray(retrained).flat[0])
    return bool(smallest / largest < PEAKY_RATIO)


def example_epsilon(unlearned: np.ndarray, retrained: np.ndarray, *, delta: float = DELTA,
                    cap: float = EPSILON_CAP) -> float:
    """Epsilon of one forget example from its scores under N unlearned and N retrained models.

    Args:
        unlearned: ``(N,)`` logit-scaled confidences under the unlearned models.
        retrained: ``(M,)`` the same under the retrained models.
        delta: The delta of the (epsilon, delta) bound.
        cap: The largest epsilon reported (the challenge's 50).

    Returns:
        Epsilon in ``[0, cap]``; 0 = no threshold attack tells the two samples apart.
    """
    u = np.asarray(unlearned, dtype=np.float64).reshape(-1)
    r = np.asarray(retrained, dtype=np.float64).reshape(-1)
    if len(u) < 2 or len(r) < 2 or not (np.isfinite(u).all() and np.isfinite(r).all()):
        raise ValueError("example_epsilon needs at least two finite scores per sample")
    pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
    largest, smallest = max(np.ptp(pos), np.ptp(neg)), min(np.ptp(pos), np.ptp(neg))
    if largest == 0:  # two point masses
        return 0.0 if pos[0] == neg[0] else cap
    if smallest / largest < PEAKY_RATIO:
        return cap
    fpr_s, fnr_s = single_threshold_rates(pos, neg)
    fpr_d, fnr_d = double_threshold_rates(pos, neg)
    eps = _rate_eps(np.concatenate([fpr_d, fpr_s]), np.concatenate([fnr_d, fnr_s]), delta)
    if np.isnan(eps).all():
        return cap
    return float(np.clip(np.nanmax(eps), 0, cap))


def epsilons(unlearned: np.ndarray, retrained: np.ndarray, *, delta: float = DELTA,
             cap: float = EPSILON_CAP) -> np.ndarray:
    """Per-example epsilons ``(F,)`` from score matrices ``(N, F)`` and ``(M, F)``."""
    u, r = np.asarray(unlearned), np.asarray(retrained)
    if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]:
        raise ValueError(f"score matrices must be (models, examples) with the same examples, "
                         f"got {u.shape} and {r.shape}")
    return np.array([example_epsilon(u[:, i], r[:, i], delta=delta, cap=cap)
                     for i in range(u.shape[1])])


def bucket_points(n_models: int) -> list[tuple[float, float, float]]:
    """``(low, high, points)`` of the score's epsilon buckets for N models per side."""
    if n_models < 2:
        raise ValueError("the forgetting score needs at least 2 models per side")
    max_eps = math.ceil(math.log(n_models - 1))
    out, start, points = [], 0.0, 1.0
    while start + 0.5 <= max_eps:
        out.append((start, start + 0.5, points))
        start += 0.5
        points /= 2
    return out


def example_points(eps: np.ndarray, n_models: int) -> np.ndarray:
    """Points ``(F,)`` each example earns: 1, 1/2, 1/4 ... by its epsilon bucket, else 0."""
    eps = np.asarray(eps, dtype=np.float64)
    pts = np.zeros(len(eps))
    done = np.zeros(len(eps), dtype=bool)
    for _, high, p in bucket_points(n_models):
        hit = ~done & (eps < high)
        pts[hit] = p
        done |= hit
    return pts


def forgetting_score(eps: np.ndarray, n_models: int) -> float:
    """The challenge's forgetting quality: mean bucket points over forget examples, in [0, 1]."""
    eps = np.asarray(eps)
    if eps.size == 0:
        raise ValueError("no forget examples")
    return float(example_points(eps, n_models).mean())


def bootstrap_ci(eps: np.ndarray, n_models: int, *, resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`forgetting_score` over forget examples.

    It covers which images happen to be in the forget set, given the N models; the spread of
    the N models themselves is in each epsilon, not in this interval.
    """
    pts = example_points(eps, n_models)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pts), size=(resamples, len(pts)))
    means = pts[idx].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def null_score(unlearned: np.ndarray, retrained: np.ndarray, *, permutations: int = 3,
               seed: int = 0, delta: float = DELTA) -> float:
    """The score a perfect unlearner gets with these many models: the mean score over random
    re-splits of each example's pooled 2N scores into two groups (a permutation null).

    With few models the epsilon estimate is noisy and biased upwards (the largest of many
    attacks): with N = 16 two samples of one distribution typically show epsilon ~log 5, so
    even retraining scores far below 1. This is the ceiling to read a score against.
    """
    u, r = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
    pooled = np.concatenate([u, r], axis=0)
    rng = np.random.default_rng(seed)
    n = min(len(u), len(r))
    scores = []
    for _ in range(permutations):
        mixed = rng.permuted(pooled, axis=0)
        scores.append(forgetting_score(epsilons(mixed[:len(u)], mixed[len(u):], delta=delta), n))
    return float(np.mean(scores))


def adjusted_score(score: float, ra_unlearned, ra_retrained, ta_unlearned, ta_retrained
                   ) -> float | None:
    """``score * (RA_u / RA_r) * (TA_u / TA_r)`` with mean accuracies (None if undefined)."""
    ra_u, ra_r = float(np.mean(ra_unlearned)), float(np.mean(ra_retrained))
    ta_u, ta_r = float(np.mean(ta_unlearned)), float(np.mean(ta_retrained))
    if ra_r <= 0 or ta_r <= 0:
        return None
    return score * (ra_u / ra_r) * (ta_u / ta_r)


def _gauss_logpdf(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)


def _fit(x: np.ndarray, axis: int, min_std: float) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=axis), np.maximum(x.std(axis=axis, ddof=1), min_std)


def ulira_log_ratio(target: np.ndarray, unlearned: np.ndarray, retrained: np.ndarray, *,
                    min_std: float = 1e-3) -> np.ndarray:
    """U-LiRA log likelihood ratio ``log N(t; mu_u, s_u) - log N(t; mu_r, s_r)`` per example.

    Args:
        target: ``(F,)`` scores of the model under test.
        unlearned: ``(N, F)`` scores of shadow unlearned models (not the target).
        retrained: ``(M, F)`` scores of shadow retrained models.
        min_std: Floor on each fitted standard deviation.

    Returns:
        ``(F,)``; > 0: the target looks unlearned rather than retrained on that example.
    """
    mu_u, sd_u = _fit(np.asarray(unlearned, np.float64), 0, min_std)
    mu_r, sd_r = _fit(np.asarray(retrained, np.float64), 0, min_std)
    t = np.asarray(target, np.float64)
    return _gauss_logpdf(t, mu_u, sd_u) - _gauss_logpdf(t, mu_r, sd_r)


def ulira(unlearned: np.ndarray, retrained: np.ndarray, *, min_std: float = 1e-3) -> dict:
    """Leave-one-out U-LiRA per example over N unlearned and M retrained models.

    Each model in turn is the target; Gaussians are fitted to the other models' scores and
    the target is called "unlearned" when its log likelihood ratio is positive.

    Returns:
        ``{"accuracy": (F,), "log_ratio": (F,)}``: balanced accuracy of the attack per example
        (0.5 = indistinguishable from retraining, 1 = always told apart) and the log ratio of
        unlearned model 0 (the deployed one) against shadows that exclude it.
    """
    u = np.asarray(unlearned, np.float64)
    r = np.asarray(retrained, np.float64)
    if len(u) < 3 or len(r) < 3:
        raise ValueError("leave-one-out U-LiRA needs at least 3 models per side")
    correct_u = np.zeros(u.shape[1])
    correct_r = np.zeros(u.shape[1])
    log_ratio0 = None
    for j in range(len(u)):
        lr = ulira_log_ratio(u[j], np.delete(u, j, axis=0), r, min_std=min_std)
        correct_u += lr > 0
        if j == 0:
            log_ratio0 = lr
    for j in range(len(r)):
        lr = ulira_log_ratio(r[j], u, np.delete(r, j, axis=0), min_std=min_std)
        correct_r += lr <= 0
    acc = 0.5 * (correct_u / len(u) + correct_r / len(r))
    return {"accuracy": acc, "log_ratio": log_ratio0}


# What the two summaries below call a mismatch worth naming (a reading aid, not a test): the
# unlearned runs spread less than SPREAD_LOW or more than SPREAD_HIGH times as much as the
# retrained ones, or sit more than SHIFT_SD of retraining's spread away from its mean.
SPREAD_LOW, SPREAD_HIGH, SHIFT_SD = 0.7, 1.4, 0.5


def spread_and_shift(unlearned: np.ndarray, retrained: np.ndarray, *, min_std: float = 1e-3
                     ) -> dict:
    """How the unlearned runs' scores on the forget examples differ from retraining's.

    Per example, with ``sd_r`` the retrained models' standard deviation (floored at
    ``min_std``):

    * **spread ratio**: ``sd_u / sd_r``; 1 = the runs vary as much as independent retrainings,
      0 = every run gives the same output (a deterministic method);
    * **confidence shift**: ``(mean_u - mean_r) / sd_r``; > 0: the runs are more confident on
      the forgotten image than retraining is (what remembering looks like), < 0: less confident
      (damage the method did not repair, or forgetting beyond retraining).

    Returns:
        ``{"spread_ratio", "confidence_shift"}``: the medians over examples (robust to the few
        saturated examples whose ``sd_r`` is near 0).
    """
    u = np.asarray(unlearned, np.float64)
    r = np.asarray(retrained, np.float64)
    if len(u) < 2 or len(r) < 2:
        raise ValueError("a spread needs at least 2 models per side")
    mu_r, sd_r = _fit(r, 0, min_std)  # U-LiRA's fit of the retrained side; u's spread unfloored
    return {"spread_ratio": float(np.median(u.std(axis=0, ddof=1) / sd_r)),
            "confidence_shift": float(np.median((u.mean(axis=0) - mu_r) / sd_r))}


def mismatch_reading(spread_ratio: float | None, shift: float | None) -> str:
    """Plain words for :func:`spread_and_shift`: what separates the unlearned runs from
    retraining on the forget examples (empty when neither number is given)."""
    if spread_ratio is None or shift is None:
        return ""
    parts = []
    if spread_ratio < SPREAD_LOW:
        parts.append(f"the runs are too alike (spread {spread_ratio:.2f}x retraining's): each "
                     "run stays close to the original instead of varying as retrainings do")
    elif spread_ratio > SPREAD_HIGH:
        parts.append(f"the runs vary more than retrainings do (spread {spread_ratio:.2f}x)")
    if shift > SHIFT_SD:
        parts.append(f"they are more confident on the forgotten images than retraining "
                     f"(+{shift:.2f} sd): they still remember them")
    elif shift < -SHIFT_SD:
        parts.append(f"they are less confident on the forgotten images than retraining "
                     f"({shift:.2f} sd): damage left unrepaired, or forgetting beyond "
                     "retraining")
    if not parts:
        return (f"spread ({spread_ratio:.2f}x) and confidence ({shift:+.2f} sd) are close to "
                "retraining's; what remains is image by image")
    return "; ".join(parts)


def histogram(eps: np.ndarray, n_models: int) -> list[dict]:
    """Counts of examples per score bucket (and beyond the last bucket)."""
    eps = np.asarray(eps, dtype=np.float64)
    rows, done = [], np.zeros(len(eps), dtype=bool)
    for low, high, p in bucket_points(n_models):
        hit = ~done & (eps < high)
        rows.append({"low": low, "high": high, "points": p, "count": int(hit.sum())})
        done |= hit
    last = rows[-1]["high"] if rows else 0.0
    rows.append({"low": last, "high": None, "points": 0.0, "count": int((~done).sum())})
    return rows


def summarize(unlearned: np.ndarray, retrained: np.ndarray, *, delta: float = DELTA,
              resamples: int = 1000, level: float = 0.95, seed: int = 0,
              accuracies: dict | None = None, null_permutations: int = 3) -> dict:
    """Every forgetting-quality number from score matrices ``(N, F)`` and ``(M, F)``.

    ``null_permutations`` re-splits give ``forgetting_quality_null`` (:func:`null_score`; 0 to
    skip). ``accuracies``, when given, holds ``RA``/``TA`` lists for ``unlearned`` and ``retrained``
    models (``{"unlearned": {"RA": [...], "TA": [...]}, "retrained": {...}}``).
    """
    u, r = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
    n = min(len(u), len(r))
    eps = epsilons(u, r, delta=delta)
    score = forgetting_score(eps, n)
    lo, hi = bootstrap_ci(eps, n, resamples=resamples, level=level, seed=seed)
    out = {
        "n_models": {"unlearned": int(len(u)), "retrained": int(len(r))},
        "forget_count": int(u.shape[1]), "delta": delta, "epsilon_cap": EPSILON_CAP,
        "forgetting_quality": score,
        "forgetting_quality_ci": [lo, hi], "ci_level": level, "ci_resamples": resamples,
        "epsilon_mean": float(eps.mean()), "epsilon_median": float(np.median(eps)),
        "epsilon_capped_fraction": float((eps >= EPSILON_CAP).mean()),
        # capped by the point-mass rule (unlearned spread < 1% of retraining's, or vice versa)
        "epsilon_peaky_fraction": float(np.mean([is_peaky(u[:, i], r[:, i])
                                                 for i in range(u.shape[1])])),
        "epsilon_buckets": histogram(eps, n),
        "per_example": {"epsilon": eps.tolist()},
        "identical_unlearned_models": bool(np.ptp(u, axis=0).max() == 0),
    }
    if len(u) >= 2 and len(r) >= 2:
        out.update(spread_and_shift(u, r))
    if null_permutations:
        null = null_score(u, r, permutations=null_permutations, seed=seed, delta=delta)
        out["forgetting_quality_null"] = null
        out["forgetting_quality_vs_null"] = score / null if null > 0 else None
    if len(u) >= 3 and len(r) >= 3:
        ul = ulira(u, r)
        out["ulira_accuracy"] = float(ul["accuracy"].mean())
        out["per_example"]["ulira_accuracy"] = ul["accuracy"].tolist()
        out["per_example"]["ulira_log_ratio"] = ul["log_ratio"].tolist()
    if accuracies:
        ua, ra = accuracies["unlearned"], accuracies["retrained"]
        out["accuracy"] = {"RA_unlearned": float(np.mean(ua["RA"])),
                           "RA_retrained": float(np.mean(ra["RA"])),
                           "TA_unlearned": float(np.mean(ua["TA"])),
                           "TA_retrained": float(np.mean(ra["TA"]))}
        out["forgetting_quality_adjusted"] = adjusted_score(score, ua["RA"], ra["RA"], ua["TA"],
                                                            ra["TA"])
    return out


# --------------------------------------------------------------------------- the protocol

RETRAIN_SEED_OFFSET = 100_000
RESULT_FILE = "forgetting_quality.json"
MIN_MODELS = 3  # ceil(log(N - 1)) must reach one 0.5-wide bucket; leave-one-out U-LiRA needs 3


def check_n(n: int) -> None:
    """Refuse too few models.

    Raises:
        ConfigError: ``n < 3``.
    """
    if n < MIN_MODELS:
        raise ConfigError(
            f"--n {n} is too few models: the challenge's score buckets epsilon up to "
            f"ceil(log(N - 1)), which is 0 for N = 2 (every example would score 0), and "
            f"leave-one-out U-LiRA needs 3 models per side. Use --n {MIN_MODELS} or more "
            "(16 is the default; more gives a finer estimate).")


def seeds(seed: int, n: int) -> tuple[list[int], list[int]]:
    """Seeds of the N unlearned runs (``seed + i``: only the method's randomness varies) and of
    the N retrained runs (``seed + 100000 + i``: never a seed of the unlearned side)."""
    return ([seed + i for i in range(n)],
            [seed + RETRAIN_SEED_OFFSET + i for i in range(n)])


def record_section(result: Mapping) -> dict:
    """The evaluation-record section (``models.model.forgetting_quality``) of a result: the
    headline numbers only, keyed like :data:`medunlearn.evaluation.directions.DIRECTIONS`."""
    keys = ("forgetting_quality", "forgetting_quality_ci", "forgetting_quality_adjusted",
            "forgetting_quality_null", "forgetting_quality_vs_null", "epsilon_mean",
            "epsilon_median", "epsilon_capped_fraction", "epsilon_peaky_fraction",
            "ulira_accuracy", "spread_ratio", "confidence_shift", "n_models",
            "forget_count", "wall_seconds")
    return {k: result[k] for k in keys if k in result}


def attach_to_record(record: dict, result: Mapping) -> dict:
    """Put :func:`record_section` into an evaluation record so reports and the gate's
    ``forgetting_quality_min`` check see it."""
    record.setdefault("models", {}).setdefault("model", {})["forgetting_quality"] = \
        record_section(result)
    return record


def examples_for(result: Mapping, *, hashes: Sequence[str] | None = None,
                 indices: Sequence[int] | None = None) -> list[dict]:
    """Per-example rows (index, sha256, epsilon, points, U-LiRA) of the named forget images,
    e.g. a deletion request's, for its certificate. Images not in the result are left out.
    """
    pe = result["per_example"]
    n = result["n_models"]["unlearned"]
    pts = example_points(np.asarray(pe["epsilon"]), n)
    want_h = set(hashes or [])
    want_i = {int(i) for i in indices or []}
    rows = []
    for k, (i, h) in enumerate(zip(pe["index"], pe["sha256"], strict=True)):
        if h in want_h or i in want_i:
            row = {"index": i, "sha256": h, "epsilon": pe["epsilon"][k], "points": float(pts[k])}
            if "ulira_accuracy" in pe:
                row["ulira_accuracy"] = pe["ulira_accuracy"][k]
            rows.append(row)
    return rows


__all__ = [
    "MIN_MODELS", "RESULT_FILE", "RETRAIN_SEED_OFFSET", "attach_to_record", "check_n",
    "examples_for", "record_section", "seeds",
    "DELTA", "EPSILON_CAP", "adjusted_score", "bootstrap_ci", "bucket_points",
    "double_threshold_rates", "epsilons", "example_epsilon", "example_points",
    "forgetting_score", "histogram", "is_peaky", "null_score", "single_threshold_rates",
    "summarize", "ulira", "ulira_log_ratio",
]

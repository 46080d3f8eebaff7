"""Safety verdict: is an unlearned model safe to deploy in place of the original?

:func:`gate` reads an evaluation record (:func:`medunlearn.api.evaluate`) and runs
each check against tolerances (:class:`GateTolerances`, defaults in ``defaults/gate.toml``):

* ``fnr_vs_original`` / ``fnr_vs_reference``: test FNR <= comparison's FNR + ``fnr_tolerance``;
* ``global_risk_vs_original`` / ``global_risk_vs_reference``: likewise for Global Risk;
* ``ta_drop``: original TA - TA <= ``ta_drop_tolerance``;
* ``attack_auc``: |loss-attack AUC (forget vs test) - the reference's| <= tolerance;
  without a reference, |AUC (forget vs validation) - 0.5| (validation samples come from the
  training pool, so 0.5 is the right target even when the test split is shifted);
* ``probe_auc``: likewise for the linear probe on penultimate features;
* ``forgetting_quality``: (only when ``forgetting_quality_min`` is set; off by default, since
  it needs N unlearned and N retrained models, see ``medunlearn verify-forgetting``) the
  per-example forgetting-quality score >= ``forgetting_quality_min``; skipped when the record
  has no ``forgetting_quality`` section;
* ``forget_changed``: fails a model whose outputs on the forgotten images are the original's
  (largest logit change at most ``unchanged_logit_tolerance``): it forgot nothing, whatever
  the population metrics say (the untouched original, or a method that changed nothing); with
  a reference, also one whose mean change there is below ``do_nothing_min_move`` of the
  reference's (``changes.vs_original.forget_moved``); skipped without an original;
* ``membership``: per-image membership evidence from shadow models
  (:mod:`medunlearn.evaluation.membership`): fails when the forgotten images still look like
  members (one-sided ``p < membership_alpha``, calibrated so that exact retraining fails at that
  rate); "cannot say" when the test's power is below ``membership_min_power`` (too few images,
  or IN and OUT overlap) or when the retrained reference itself looks like a member; "not run",
  with the command that enables it, when the record has no shadow evidence;
* ``forget_effect``: the paired test against the original with the shadows as the yardstick
  (:mod:`medunlearn.evaluation.membership_paired`): fails when the forgotten images confidently
  kept more than half of the memorisation exact retraining removes, passes on evidence of a
  forget-specific drop, otherwise "cannot say"; "not run" without shadows or the original.
  The two answer one question: when one passes and the other cannot say, the undecided one is
  reported as superseded (skipped); a fail of either fails.

A check is ``pass``, ``fail``, ``cannot_say`` (it ran, but the evidence cannot decide: never
counted as passed), ``skipped`` or ``not_run`` (it could not or did not run; the verdict passes
unless ``fail_on_skipped``). A **degenerate reference** (one class predicted for at least 95% of
the test images, or balanced accuracy below 0.6: ``utility.degenerate_reason``, the reports'
rule) turns every comparison with it into ``cannot_say``. :class:`Verdict` ``status`` is
"failed" when a check fails, else "cannot say" when a check cannot say, else "passed";
``passed`` is true only for "passed".

AUC tolerances are widened to ``auc_noise_sigmas`` standard errors (Hanley-McNeil) for small
sets: of the difference of the model's and the reference's AUC when a reference is given, of the
model's AUC alone against 0.5. The FNR, Global Risk and TA-drop tolerances are widened to
``rate_noise_sigmas`` standard errors of the difference of the two models' binomial estimates
(:func:`rate_se`). A check that cannot be computed is ``skipped`` with its reason, never
silently passed.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from medunlearn.config import from_dict
from medunlearn.errors import ConfigError

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"
CANNOT_SAY, NOT_RUN = "cannot_say", "not_run"
PASSED, FAILED, UNDECIDED = "passed", "failed", "cannot say"  # Verdict.status
SHADOWS_COMMAND = ("medunlearn shadows ORIGINAL_RUN --k 16, then evaluate with --shadows "
                   "ORIGINAL_RUN/shadows")


@dataclass(frozen=True)
class GateTolerances:
    """Tolerances of the safety gate (fractions unless stated; see ``defaults/gate.toml``)."""

    fnr_tolerance: float = 0.05  # FNR may exceed original's / reference's by this much
    global_risk_tolerance: float = 0.05  # Global Risk (cost units per patient)
    ta_drop_tolerance: float = 0.03  # test-accuracy drop against the original
    attack_auc_tolerance: float = 0.05  # |attack AUC - reference's (or 0.5)|
    probe_auc_tolerance: float = 0.05  # |probe AUC - reference's (or 0.5)|
    auc_noise_sigmas: float = 2.0  # widen AUC tolerances to this many standard errors
    rate_noise_sigmas: float = 2.0  # widen FNR, Global Risk and TA-drop tolerances likewise
    fail_on_skipped: bool = False  # a skipped check fails the gate
    # False: the attack/probe checks are skipped (for exact retraining, which is what they
    # approximate: its forgotten images are unseen by construction)
    privacy_checks: bool = True
    forgetting_quality_min: float | None = None  # None: the costly check is not run
    # a model whose logits on the forgotten images moved by no more than this from the
    # original's forgot nothing (forget_changed)
    unchanged_logit_tolerance: float = 1e-6
    # with a reference: a model that moved on the forgotten images by less than this share of
    # the reference's own move from the original is indistinguishable from doing nothing
    # (forget_changed; tune rejects such grid points too)
    do_nothing_min_move: float = 0.25
    membership_alpha: float = 0.05  # level of the per-image membership test (false-alarm rate)
    membership_min_power: float = 0.8  # below this power the membership check cannot say


@dataclass
class Verdict:
    """Outcome of :func:`gate`: ``status`` "passed", "failed" or "cannot say"; ``passed`` is true
    only for "passed"; ``reasons`` lists why it did not pass (failures, then undecided checks)."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    status: str = PASSED

    def to_dict(self) -> dict:
        return asdict(self)


def _read_toml(path: Path | None, text: str | None = None) -> dict:
    try:
        return tomllib.loads(text if text is not None else path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the gate config {path}: {exc}.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The gate config {path} is not valid TOML: {exc}.") from exc


def default_tolerances() -> GateTolerances:
    """The tolerances shipped in ``medunlearn/defaults/gate.toml``."""
    text = resources.files("medunlearn").joinpath("defaults/gate.toml").read_text("utf-8")
    return from_dict(GateTolerances, _read_toml(None, text), where="defaults/gate.toml")


def load_tolerances(path: str | os.PathLike | None = None) -> GateTolerances:
    """Defaults overlaid with the keys of a user TOML file (unknown keys are an error).

    Raises:
        ConfigError: unreadable file, invalid TOML, unknown keys, negative tolerances.
    """
    tol = default_tolerances()
    if path is not None:
        user = _read_toml(Path(path))
        tol = from_dict(GateTolerances, asdict(tol) | user, where=str(path))
    _validate(tol)
    return tol


def _validate(tol: GateTolerances) -> None:
    for k, v in asdict(tol).items():
        if isinstance(v, float) and not (v >= 0 and math.isfinite(v)):
            raise ConfigError(f"Gate tolerance {k} must be a non-negative number, got {v}.")
    if not 0 < tol.membership_alpha < 1:
        raise ConfigError(f"membership_alpha must lie strictly between 0 and 1, got "
                          f"{tol.membership_alpha}.")
    if not 0 <= tol.membership_min_power < 1:
        raise ConfigError(f"membership_min_power must lie in [0, 1), got "
                          f"{tol.membership_min_power}.")


def _get(metrics: Mapping, *path: str):
    cur = metrics
    for p in path:
        if not isinstance(cur, Mapping) or cur.get(p) is None:
            return None
        cur = cur[p]
    if isinstance(cur, (int, float)) and not isinstance(cur, bool):
        return float(cur) if math.isfinite(cur) else None
    return cur


def _skip(name: str, reason: str) -> dict:
    return {"name": name, "status": SKIPPED, "value": None, "limit": None, "reason": reason,
            "message": f"{name}: skipped ({reason})"}


def _cannot_say(check: dict, reason: str) -> dict:
    """``check`` turned into "cannot say" (its numbers kept for reading)."""
    return check | {"status": CANNOT_SAY, "reason": reason,
                    "message": f"{check['name']}: CANNOT SAY ({reason})"}


def reference_degenerate(metrics: Mapping) -> str | None:
    """Why the record's retrained reference is degenerate (the reports' rule,
    :func:`medunlearn.evaluation.utility.degenerate_reason`), or None."""
    from medunlearn.evaluation.utility import degenerate_reason

    if (metrics.get("models") or {}).get("reference") is None:
        return None
    return degenerate_reason(_get(metrics, "models", "reference", "utility", "balanced_accuracy"),
                             _get(metrics, "models", "reference", "utility",
                                  "majority_prediction_share"))


def membership_check(metrics: Mapping, tol: GateTolerances) -> dict:
    """The ``membership`` check (see the module docstring)."""
    from scipy.stats import norm

    from medunlearn.evaluation.membership import power

    name = "membership"
    sec = _get(metrics, "models", "model", "membership")
    if not isinstance(sec, Mapping):
        why = ((metrics.get("skipped") or {}).get("membership")
               or f"no shadow-model evidence in the record; enable it: {SHADOWS_COMMAND}")
        return {"name": name, "status": NOT_RUN, "value": None, "limit": None, "reason": why,
                "message": f"{name}: {why}" if why.startswith("not run") else
                f"{name}: not run ({why})"}
    z, zmem, ratio = sec.get("z"), sec.get("z_if_member"), sec.get("sd_ratio")
    alpha, min_power = tol.membership_alpha, tol.membership_min_power
    limit = float(norm.isf(alpha))
    base = {"name": name, "value": z, "limit": limit, "compare_to": None, "tolerance": alpha}
    n = sec.get("n_tested", 0)
    if z is None or zmem is None or ratio is None:
        return _cannot_say(base | {"message": ""}, sec.get("reason") or "no testable image")
    pw = power(zmem, ratio, alpha)
    base |= {"power": pw, "p_value": sec.get("p_value"), "n_images": n}
    if not pw >= min_power:
        return _cannot_say(base, f"the membership test's power is {pw:.2f} < {min_power:g}: "
                           f"on these {n} image(s) the shadow models' IN and OUT confidences "
                           "overlap so much that retraining and remembering look alike")
    ref = _get(metrics, "models", "reference", "membership")
    if isinstance(ref, Mapping) and ref.get("z") is not None and ref["z"] > limit:
        return _cannot_say(base, f"the retrained reference itself looks like a member (z "
                           f"{ref['z']:.2f} > {limit:.2f}): the test is not calibrated for "
                           "these images")
    ok = z <= limit
    p = sec.get("p_value")
    msg = (f"{name}: {'pass' if ok else 'FAIL'} - forgotten images' membership z {z:.2f} "
           f"(p {p:.3g}) vs limit {limit:.2f} (alpha {alpha:g}), power {pw:.2f}, {n} image(s)")
    return base | {"status": PASS if ok else FAIL, "message": msg}


def _one_membership_answer(checks: list[dict]) -> list[dict]:
    """``membership`` and ``forget_effect`` answer one question (do the forgotten images still
    look remembered?) with two tests. A fail of either fails; when one passes and the other
    cannot say, the question is answered: the undecided one is reported as superseded (a
    ``skipped`` check naming the decisive one) instead of holding the verdict at "cannot
    say"."""
    by = {c["name"]: c for c in checks if c["name"] in ("membership", "forget_effect")}
    if len(by) < 2 or any(c["status"] == FAIL for c in by.values()):
        return checks
    decided = [n for n, c in by.items() if c["status"] == PASS]
    if not decided:
        return checks
    out = []
    for c in checks:
        if c["name"] in by and c["status"] == CANNOT_SAY:
            c = c | {"status": SKIPPED, "superseded_by": decided[0], "message": (
                f"{c['name']}: cannot say on its own; the {decided[0]} check answers the same "
                "question and passed")}
        out.append(c)
    return out


def forget_effect_check(metrics: Mapping) -> dict:
    """The ``forget_effect`` check: the paired test against the original
    (:mod:`medunlearn.evaluation.membership_paired`), recorded in
    ``models.model.forget_effect``; its verdict is the test's (fail: the forgotten images
    confidently kept more than half of what retraining removes; pass: a forget-specific drop;
    otherwise cannot say)."""
    name = "forget_effect"
    sec = _get(metrics, "models", "model", "forget_effect")
    if not isinstance(sec, Mapping):
        why = ("not run: it needs shadow models and the original model; enable it: "
               f"{SHADOWS_COMMAND}, with --original")
        return {"name": name, "status": NOT_RUN, "value": None, "limit": None, "reason": why,
                "message": f"{name}: {why}"}
    base = {"name": name, "value": sec.get("share"), "limit": sec.get("min_share"),
            "compare_to": 1.0, "tolerance": sec.get("alpha"),
            "upper": sec.get("share_upper"), "n_images": sec.get("n_tested")}
    if sec.get("status") not in (PASS, FAIL):
        return _cannot_say(base, sec.get("reason") or "undecided")
    ok = sec["status"] == PASS
    return base | {"status": PASS if ok else FAIL, "message": (
        f"{name}: {'pass' if ok else 'FAIL'} - {sec['reason']} ({sec.get('n_tested')} "
        "image(s), against the original, with the shadow models as the yardstick)")}


def _unchanged_check(metrics: Mapping, tolerance: float, min_move: float) -> dict:
    name = "forget_changed"
    if (metrics.get("models") or {}).get("original") is None:
        return _skip(name, "no --original model given")
    change = _get(metrics, "changes", "vs_original", "forget_max_logit_change")
    if change is None:
        return _skip(name, "the change on the forgotten images was not computed")
    base = {"name": name, "value": change, "limit": tolerance, "compare_to": 0.0,
            "tolerance": tolerance}
    if not change > tolerance:
        return base | {"status": FAIL, "message": (
            f"{name}: FAIL - largest logit change on the forgotten images {change:.3g} vs the "
            f"original (must exceed {tolerance:g}): the model's outputs there are the "
            "original's, nothing was forgotten")}
    moved = _get(metrics, "changes", "vs_original", "forget_moved")
    if moved is None:  # no reference: only the exact comparison can be made
        return base | {"status": PASS, "message": (
            f"{name}: pass - largest logit change on the forgotten images {change:.3g} vs the "
            f"original (must exceed {tolerance:g}; give a reference to also compare the "
            "size of the change with retraining's)")}
    ok = moved >= min_move
    msg = (f"{name}: {'pass' if ok else 'FAIL'} - on the forgotten images the model moved "
           f"{moved:.2f}x as far from the original as retraining did (must be at least "
           f"{min_move:g})" + ("" if ok else ": to anyone holding the original it is "
                                         "indistinguishable from doing nothing"))
    return base | {"status": PASS if ok else FAIL, "value": moved, "limit": min_move,
                   "compare_to": 1.0, "tolerance": min_move, "message": msg}


def _upper_check(name: str, label: str, value, other, tol: float, other_name: str,
                 missing: str | None, se: float | None = None, sigmas: float = 0.0) -> dict:
    """value must be <= other + max(tol, sigmas * se)."""
    if missing:
        return _skip(name, missing)
    if value is None or other is None:
        return _skip(name, f"{label} not computed for "
                     f"{'this model' if value is None else 'the ' + other_name}")
    eff = max(tol, sigmas * se) if se is not None else tol
    limit = other + eff
    ok = value <= limit + 1e-12
    widened = f"{eff:.4f}, widened from {tol:g} for sample size" if eff > tol else f"{tol:g}"
    msg = (f"{name}: {'pass' if ok else 'FAIL'} - {label} {value:.4f} vs {other_name} "
           f"{other:.4f} (limit {limit:.4f} = {other_name} + {widened})")
    return {"name": name, "status": PASS if ok else FAIL, "value": value, "limit": limit,
            "compare_to": other, "tolerance": eff, "message": msg}


def rate_se(key: str, clinical: Mapping | None, costs: Mapping | None = None) -> float | None:
    """Binomial standard error of one model's test FNR or Global Risk from its confusion counts
    (``None`` when the counts are missing).

    FNR: ``sqrt(p (1 - p) / (TP + FN))``. Global Risk, the mean per-patient cost ``X`` (c_FN for
    a miss, c_FP for a false alarm, else 0): ``sqrt((E[X^2] - E[X]^2) / N)``.
    """
    if not isinstance(clinical, Mapping):
        return None
    try:
        tp, fp, fn, n = (float(clinical[k]) for k in ("tp", "fp", "fn", "n"))
    except (KeyError, TypeError, ValueError):
        return None
    if key == "fnr":
        pos = tp + fn
        if pos <= 0:
            return None
        p = fn / pos
        return math.sqrt(p * (1 - p) / pos)
    if n <= 0:
        return None
    c_fn = float((costs or {}).get("c_fn", 5.0))
    c_fp = float((costs or {}).get("c_fp", 1.0))
    mean = (c_fn * fn + c_fp * fp) / n
    second = (c_fn ** 2 * fn + c_fp ** 2 * fp) / n
    return math.sqrt(max(second - mean ** 2, 0.0) / n)


def _diff_se(a: float | None, b: float | None) -> float | None:
    """Standard error of the difference of two independent estimates."""
    return None if a is None or b is None else math.sqrt(a * a + b * b)


def _closeness_check(name: str, label: str, value, target, tol: float, se, sigmas: float,
                     target_name: str, missing: str | None) -> dict:
    """|value - target| must be <= max(tol, sigmas * se)."""
    if missing:
        return _skip(name, missing)
    if value is None or target is None:
        return _skip(name, f"{label} not computed (too few forget or test samples?)")
    eff = max(tol, sigmas * se) if se is not None else tol
    gap = abs(value - target)
    ok = gap <= eff + 1e-12
    widened = f", widened from {tol:g} for sample size" if eff > tol else ""
    msg = (f"{name}: {'pass' if ok else 'FAIL'} - {label} {value:.4f} vs {target_name} "
           f"{target:.4f}: |gap| {gap:.4f} (tolerance {eff:.4f}{widened})")
    return {"name": name, "status": PASS if ok else FAIL, "value": value, "limit": eff,
            "compare_to": target, "tolerance": eff, "message": msg}


def _forgetting_quality_check(metrics: Mapping, minimum: float) -> dict:
    name = "forgetting_quality"
    value = _get(metrics, "models", "model", "forgetting_quality", "forgetting_quality")
    if value is None:
        return _skip(name, "no forgetting-quality section in the record (run 'medunlearn "
                     "verify-forgetting' and attach its result)")
    ok = value >= minimum - 1e-12
    n = _get(metrics, "models", "model", "forgetting_quality", "n_models", "unlearned")
    n_txt = f" from N = {int(n)} models per side" if n is not None else ""
    return {"name": name, "status": PASS if ok else FAIL, "value": value, "limit": minimum,
            "compare_to": None, "tolerance": None,
            "message": (f"{name}: {'pass' if ok else 'FAIL'} - per-example forgetting quality "
                        f"{value:.4f}{n_txt} (minimum {minimum:g})")}


def gate(metrics: Mapping, tolerances: GateTolerances | Mapping | None = None) -> Verdict:
    """Run the safety checks on an ``evaluate_run`` metrics dict.

    Args:
        metrics: An evaluation record (:func:`medunlearn.api.evaluate`, ``runs.evaluate_run``).
        tolerances: A :class:`GateTolerances`, a dict of overrides, or None for the defaults.

    Returns:
        A :class:`Verdict`; ``passed`` is false when any check fails (or, with
        ``fail_on_skipped``, is skipped). ``reasons`` lists the failing checks' messages.
    """
    if tolerances is None:
        tol = default_tolerances()
    elif isinstance(tolerances, GateTolerances):
        tol = tolerances
    else:
        tol = from_dict(GateTolerances, asdict(default_tolerances()) | dict(tolerances),
                        where="gate tolerances")
    _validate(tol)
    models = metrics.get("models") or {}
    has_orig = models.get("original") is not None
    has_ref = models.get("reference") is not None
    clinical = _get(metrics, "models", "model", "clinical", "test") is not None
    no_clin = (None if clinical else
               "no disease classes: the view is not binary and no positive classes were given")
    checks = []
    costs = metrics.get("costs")
    for key, label, t in (("fnr", "test FNR", tol.fnr_tolerance),
                          ("global_risk", "test Global Risk", tol.global_risk_tolerance)):
        value = _get(metrics, "models", "model", "clinical", "test", key)
        se_model = rate_se(key, _get(metrics, "models", "model", "clinical", "test"), costs)
        for other, have in (("original", has_orig), ("reference", has_ref)):
            missing = no_clin or (None if have else f"no --{other} model given")
            se = _diff_se(se_model, rate_se(
                key, _get(metrics, "models", other, "clinical", "test"), costs))
            checks.append(_upper_check(
                f"{key}_vs_{other}", label, value,
                _get(metrics, "models", other, "clinical", "test", key), t, other, missing,
                se, tol.rate_noise_sigmas))
    ta = _get(metrics, "models", "model", "utility", "TA")
    ta0 = _get(metrics, "models", "original", "utility", "TA")
    if not has_orig:
        checks.append(_skip("ta_drop", "no --original model given"))
    elif ta is None or ta0 is None:
        checks.append(_skip("ta_drop", "test accuracy not computed"))
    else:
        drop = ta0 - ta
        n_test = _get(metrics, "counts", "test")
        se = (math.sqrt((ta * (1 - ta) + ta0 * (1 - ta0)) / n_test) if n_test else None)
        eff = max(tol.ta_drop_tolerance, tol.rate_noise_sigmas * se) if se is not None \
            else tol.ta_drop_tolerance
        ok = drop <= eff + 1e-12
        widened = (f"{eff:.4f}, widened from {tol.ta_drop_tolerance:g} for sample size"
                   if eff > tol.ta_drop_tolerance else f"{tol.ta_drop_tolerance:g}")
        checks.append({
            "name": "ta_drop", "status": PASS if ok else FAIL, "value": drop,
            "limit": eff, "compare_to": ta0, "tolerance": eff,
            "message": (f"ta_drop: {'pass' if ok else 'FAIL'} - TA {ta:.4f} vs original "
                        f"{ta0:.4f}: drop {drop:.4f} (limit {widened})"),
        })
    for name, section, label, t in (
            ("attack_auc", "privacy", "loss-attack AUC (forget vs test)", tol.attack_auc_tolerance),
            ("probe_auc", "representation", "feature-probe AUC (forget vs test)",
             tol.probe_auc_tolerance)):
        key = name
        if has_ref:
            target, tname = _get(metrics, "models", "reference", section, name), "reference"
        else:
            # Without a reference the target is 0.5, which only holds when the non-members come
            # from the same pool as the training data: prefer the validation split (MedMNIST
            # test splits can be shifted, e.g. PneumoniaMNIST's).
            target, tname = 0.5, "0.5 (no reference given)"
            if _get(metrics, "models", "model", section, f"{name}_val") is not None:
                key, label = f"{name}_val", label.replace("vs test", "vs validation")
        value = _get(metrics, "models", "model", section, key)
        se = _get(metrics, "models", "model", section, f"{key}_se")
        ref_se = _get(metrics, "models", "reference", section, f"{key}_se") if has_ref else None
        if ref_se is not None:  # the reference's AUC is an estimate on the same sets too
            se = _diff_se(se, ref_se)
        off = None if tol.privacy_checks else ("exact retraining: the model never saw the "
                                               "forgotten images, which this check approximates")
        checks.append(_closeness_check(name, label, value, target, t, se, tol.auc_noise_sigmas,
                                       tname, off))
    if tol.forgetting_quality_min is not None:
        checks.append(_forgetting_quality_check(metrics, tol.forgetting_quality_min))
    checks.append(_unchanged_check(metrics, tol.unchanged_logit_tolerance,
                                   tol.do_nothing_min_move))
    if tol.privacy_checks:
        checks.append(membership_check(metrics, tol))
        checks.append(forget_effect_check(metrics))
    else:
        for check in ("membership", "forget_effect"):
            checks.append(_skip(check, "exact retraining: the model never saw the forgotten "
                                "images, which this check approximates"))
    checks = _one_membership_answer(checks)
    why = reference_degenerate(metrics)
    if why:  # a comparison with a degenerate reference says nothing
        on_ref = {"fnr_vs_reference", "global_risk_vs_reference", "attack_auc", "probe_auc"}
        checks = [_cannot_say(c, f"the retrained reference {why}: closeness to it says nothing")
                  if c["name"] in on_ref and c["status"] in (PASS, FAIL) else c
                  for c in checks]
    failed = [c for c in checks if c["status"] == FAIL]
    undecided = [c for c in checks if c["status"] == CANNOT_SAY]
    skipped = [c for c in checks if c["status"] in (SKIPPED, NOT_RUN)]
    reasons = [c["message"] for c in failed]
    if tol.fail_on_skipped:
        reasons += [c["message"] + " [fail_on_skipped]" for c in skipped]
    status = FAILED if reasons else (UNDECIDED if undecided else PASSED)
    reasons += [c["message"] for c in undecided]
    return Verdict(passed=status == PASSED, reasons=reasons, checks=checks, status=status)

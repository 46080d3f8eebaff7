"""The safety gate on hand-made metrics dicts, and its TOML configuration."""

from __future__ import annotations

import dataclasses

import pytest

from medunlearn.errors import ConfigError
from medunlearn.evaluation.gate import (
    GateTolerances,
    default_tolerances,
    gate,
    load_tolerances,
)


def _model(fnr=0.10, risk=0.60, ta=0.85, attack=0.52, probe=0.50):
    return {
        "utility": {"TA": ta},
        "clinical": {"test": {"fnr": fnr, "global_risk": risk}},
        "privacy": {"attack_auc": attack, "attack_auc_se": 0.01},
        "representation": {"probe_auc": probe, "probe_auc_se": 0.01},
    }


def _metrics(model=None, original=None, reference=None):
    return {"models": {"model": model or _model(), "original": original or _model(),
                       "reference": reference}}


def _status(v):
    return {c["name"]: c["status"] for c in v.checks}


def test_defaults_file_matches_dataclass():
    assert default_tolerances() == GateTolerances()


def test_all_pass_with_reference():
    v = gate(_metrics(reference=_model(attack=0.50)))
    assert v.passed and not v.reasons and v.status == "passed"
    s = _status(v)
    assert s.pop("membership") == "not_run"  # no shadow models: never silently passed
    assert s.pop("forget_effect") == "not_run"
    assert s.pop("forget_changed") == "skipped"  # the record has no forget-set change
    assert set(s.values()) == {"pass"}
    assert len(v.checks) == 10


def test_a_model_that_is_the_original_on_the_forget_set_fails():
    m = _metrics(reference=_model())
    m["changes"] = {"vs_original": {"forget_max_logit_change": 0.0}}
    v = gate(m)
    c = next(c for c in v.checks if c["name"] == "forget_changed")
    assert c["status"] == "fail" and "nothing was forgotten" in c["message"]
    assert not v.passed
    m["changes"]["vs_original"]["forget_max_logit_change"] = 0.3
    assert next(c for c in gate(m).checks if c["name"] == "forget_changed")["status"] == "pass"


def test_a_model_that_moved_far_less_than_retraining_does_nothing():
    """With a reference, the change must be a real share of retraining's own change."""
    m = _metrics(reference=_model())
    m["changes"] = {"vs_original": {"forget_max_logit_change": 0.3, "forget_moved": 0.05}}
    c = next(c for c in gate(m).checks if c["name"] == "forget_changed")
    assert c["status"] == "fail" and "indistinguishable from doing nothing" in c["message"]
    assert c["value"] == 0.05 and c["limit"] == default_tolerances().do_nothing_min_move
    assert not gate(m).passed
    m["changes"]["vs_original"]["forget_moved"] = 0.9
    assert next(c for c in gate(m).checks if c["name"] == "forget_changed")["status"] == "pass"
    strict = GateTolerances(do_nothing_min_move=0.95)
    assert next(c for c in gate(m, strict).checks
                if c["name"] == "forget_changed")["status"] == "fail"


def test_fnr_rise_fails_with_numbers():
    v = gate(_metrics(model=_model(fnr=0.30), reference=_model()))
    assert not v.passed
    s = _status(v)
    assert s["fnr_vs_original"] == "fail" and s["fnr_vs_reference"] == "fail"
    assert any("0.3000" in r and "0.1000" in r for r in v.reasons)


def test_ta_drop_and_privacy_fail():
    v = gate(_metrics(model=_model(ta=0.70, attack=0.75, probe=0.80), reference=_model()))
    s = _status(v)
    assert s["ta_drop"] == s["attack_auc"] == s["probe_auc"] == "fail"


def test_missing_reference_is_skipped_not_passed():
    v = gate({"models": {"model": _model(attack=0.53), "original": _model()}})
    s = _status(v)
    assert s["fnr_vs_reference"] == "skipped" and s["global_risk_vs_reference"] == "skipped"
    assert s["attack_auc"] == "pass"  # against 0.5
    assert any("no --reference" in c["message"] for c in v.checks)
    assert v.passed
    strict = gate({"models": {"model": _model(), "original": _model()}},
                  {"fail_on_skipped": True})
    assert not strict.passed and any("skipped" in r for r in strict.reasons)


def test_no_clinical_view_is_skipped():
    m = _model()
    m["clinical"] = None
    v = gate({"models": {"model": m, "original": _model(), "reference": _model()}})
    assert _status(v)["fnr_vs_original"] == "skipped"


def test_auc_tolerance_widened_by_noise():
    m = _model(attack=0.58)
    m["privacy"]["attack_auc_se"] = 0.05  # small forget set: 2 SE = 0.10 > 0.05
    v = gate({"models": {"model": m, "original": _model()}})
    assert _status(v)["attack_auc"] == "pass"
    v = gate({"models": {"model": m, "original": _model()}}, {"auc_noise_sigmas": 0.0})
    assert _status(v)["attack_auc"] == "fail"


def test_auc_against_a_reference_widens_by_the_se_of_the_difference():
    """Both AUCs are estimates on the same few forget images (a 47-image forget set gave a
    retrained reference a probe AUC of 0.38): the tolerance uses the SE of their difference."""
    m, ref = _model(probe=0.52), _model(probe=0.40)
    m["representation"]["probe_auc_se"] = 0.044
    ref["representation"]["probe_auc_se"] = 0.044  # 2 x sqrt(2) x 0.044 = 0.124 >= 0.12
    probe = next(c for c in gate(_metrics(model=m, reference=ref)).checks
                 if c["name"] == "probe_auc")
    assert probe["status"] == "pass" and probe["tolerance"] == pytest.approx(0.1245, abs=1e-4)
    ref["representation"]["probe_auc_se"] = 0.0  # an exact target: the model's SE alone
    probe = next(c for c in gate(_metrics(model=m, reference=ref)).checks
                 if c["name"] == "probe_auc")
    assert probe["status"] == "fail" and probe["tolerance"] == pytest.approx(0.088)


def test_user_toml(tmp_path):
    f = tmp_path / "g.toml"
    f.write_text("fnr_tolerance = 0.2\n")
    tol = load_tolerances(f)
    assert tol == dataclasses.replace(GateTolerances(), fnr_tolerance=0.2)
    f.write_text("fnr_tolerence = 0.2\n")
    with pytest.raises(ConfigError, match="Unknown option"):
        load_tolerances(f)
    f.write_text("fnr_tolerance = -1\n")
    with pytest.raises(ConfigError, match="non-negative"):
        load_tolerances(f)
    f.write_text("fnr_tolerance = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_tolerances(f)


def test_without_reference_uses_validation_auc_against_half():
    m = _model(attack=0.70, probe=0.68)  # forget vs a shifted test split
    m["privacy"] |= {"attack_auc_val": 0.51, "attack_auc_val_se": 0.01}
    m["representation"] |= {"probe_auc_val": 0.52, "probe_auc_val_se": 0.01}
    v = gate({"models": {"model": m, "original": _model()}})
    s = _status(v)
    assert s["attack_auc"] == s["probe_auc"] == "pass"
    assert any("vs validation" in c["message"] for c in v.checks)
    v = gate({"models": {"model": m, "original": _model(), "reference": _model(attack=0.50)}})
    assert _status(v)["attack_auc"] == "fail"  # with a reference: test AUC vs the reference's


def _counts(tp, fp, tn, fn, c_fn=5.0, c_fp=1.0):
    n = tp + fp + tn + fn
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n, "fnr": fn / (tp + fn),
            "global_risk": (c_fn * fn + c_fp * fp) / n}


def test_rate_tolerances_widen_for_small_test_sets_only():
    """200 test images (100 with disease): 3 -> 6 misses is within the noise of two models
    (tolerance widened from 0.05) and passes; the same rates on 2000 images fail; a model that
    misses 20 of 100 fails either way."""
    from medunlearn.evaluation.gate import rate_se

    def record(model, original, n_test):
        m, o = _model(), _model()
        m["clinical"]["test"], o["clinical"]["test"] = model, original
        return {"models": {"model": m, "original": o}, "counts": {"test": n_test},
                "costs": {"c_fn": 5.0, "c_fp": 1.0}}

    small = gate(record(_counts(94, 4, 96, 6), _counts(97, 2, 98, 3), 200))
    by = {c["name"]: c for c in small.checks}
    assert by["fnr_vs_original"]["status"] == "pass"
    assert by["global_risk_vs_original"]["status"] == "pass"
    assert "widened from 0.05 for sample size" in by["global_risk_vs_original"]["message"]
    big = gate(record(_counts(940, 40, 960, 60), _counts(970, 20, 980, 30), 2000))
    assert {c["name"]: c["status"] for c in big.checks}["global_risk_vs_original"] == "fail"
    worse = gate(record(_counts(80, 4, 96, 20), _counts(97, 2, 98, 3), 200))
    assert {c["name"]: c["status"] for c in worse.checks}["fnr_vs_original"] == "fail"
    # the standard error of Global Risk by hand: X = 5 per miss, 1 per false alarm
    c = _counts(97, 2, 98, 3)
    ex, ex2 = (5 * 3 + 2) / 200, (25 * 3 + 2) / 200
    assert rate_se("global_risk", c, {"c_fn": 5, "c_fp": 1}) == pytest.approx(
        ((ex2 - ex ** 2) / 200) ** 0.5)
    assert rate_se("fnr", {"tp": 0, "fp": 1, "fn": 0, "n": 5}) is None  # no positives


def test_privacy_checks_can_be_switched_off_for_exact_retraining():
    far = _metrics(model=_model(attack=0.80, probe=0.80))
    assert not gate(far).passed
    v = gate(far, {"privacy_checks": False})
    assert v.passed and _status(v)["attack_auc"] == "skipped"
    assert "exact retraining" in next(c for c in v.checks if c["name"] == "probe_auc")["reason"]


def test_a_decisive_forget_effect_answers_an_undecided_membership_test():
    """The two per-image tests answer one question: a pass of one settles a 'cannot say' of
    the other; a fail of either fails."""
    m = _metrics(reference=_model())
    m["models"]["model"]["membership"] = {"z": 0.1, "z_if_member": 0.5, "sd_ratio": 1.0,
                                          "p_value": 0.46, "n_tested": 70}  # power ~0.1
    m["models"]["model"]["forget_effect"] = {"status": "pass", "share": 0.9, "min_share": 0.5,
                                             "share_upper": 1.5, "alpha": 0.05,
                                             "n_tested": 70, "reason": "a drop"}
    v = gate(m)
    s = _status(v)
    assert s["forget_effect"] == "pass" and s["membership"] == "skipped"
    assert "forget_effect check answers the same question" in next(
        c["message"] for c in v.checks if c["name"] == "membership")
    assert v.passed
    m["models"]["model"]["forget_effect"] |= {"status": "cannot say", "reason": "too few"}
    v = gate(m)
    assert v.status == "cannot say" and {_status(v)[k] for k in ("membership",
                                                                 "forget_effect")} == {
        "cannot_say"}
    m["models"]["model"]["forget_effect"] |= {"status": "fail", "share": 0.0,
                                              "share_upper": 0.1, "reason": "kept"}
    v = gate(m)
    assert not v.passed and _status(v)["forget_effect"] == "fail"
    assert _status(v)["membership"] == "cannot_say"  # not superseded by a fail

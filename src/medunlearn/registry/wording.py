"""Plain words for certificates: what each safety check asked, what it found, and how much it
can say for the number of images a request names.

A certificate is read by patients and auditors, so it never shows the gate's internal messages
(they name command-line flags and raw tolerances). Each check becomes one row: its question, its
outcome (passed, failed, not run, or *cannot say*), the measured value and the limit, rounded.

A membership attack on a handful of images is too noisy to show anything: its tolerance is
widened to two standard errors, which for three images is about ±0.34 around 0.5, so even a
model that remembers the images would pass. Such a check is reported as *cannot say* rather than
*passed*, naming the check that could: a per-example forgetting-quality test that compares the
model with many models retrained without the images (``medunlearn audit forgetting-quality``,
:mod:`medunlearn.registry.forgetting_proof`).
"""

from __future__ import annotations

#: A closeness check whose tolerance is this wide (or wider) cannot tell forgetting from
#: remembering: an attack AUC anywhere in 0.3..0.7 is what a model that still remembers a few
#: images commonly shows.
LOW_POWER_TOLERANCE = 0.2

STRONGER_CHECK = ("A stronger check can: the per-example forgetting-quality test, which compares "
                  "this model with many models retrained without the images (see the per-image "
                  "forgetting check below).")

#: check name -> (short name, the question it answers)
QUESTIONS = {
    "fnr_vs_original": ("Missed diagnoses",
                        "Does the new model miss no more sick patients in the test set "
                        "(false-negative rate) than the model it replaces, within {tol}?"),
    "global_risk_vs_original": ("Clinical risk",
                                "Is the expected cost of the new model's errors per patient "
                                "no higher than before, within {tol}?"),
    "ta_drop": ("Accuracy", "Does test accuracy drop by at most {tol}?"),
    "attack_auc": ("Membership attack",
                   "Can an attack that compares the model's loss on the forgotten images with "
                   "its loss on images it never saw no longer tell them apart (a score near "
                   "0.5, the value of guessing)?"),
    "probe_auc": ("Internal-feature test",
                  "Can a classifier on the model's internal features no longer tell the "
                  "forgotten images from unseen ones (a score near 0.5)?"),
    "fnr_vs_reference": ("Missed diagnoses vs exact retraining",
                         "Does the model miss no more sick patients than a model retrained "
                         "from scratch without the images?"),
    "global_risk_vs_reference": ("Clinical risk vs exact retraining",
                                 "Is its clinical risk no higher than that of a model retrained "
                                 "from scratch without the images?"),
    "forget_changed": ("Anything forgotten",
                       "Did the model's outputs on the forgotten images change from the model "
                       "it replaces (and, next to a retrained reference, by more than a small "
                       "share of what retraining changes)?"),
    "forget_effect": ("Memorisation removed",
                      "Compared with the model it replaces, did the new model lose on the "
                      "forgotten images what the shadow models say had been memorised of them "
                      "(at least half of what exact retraining removes)?"),
    "membership": ("Per-image membership test",
                   "Compared with shadow models trained with and without each image, do the "
                   "forgotten images no longer look like images the model was trained on?"),
}

NOT_RUN_REFERENCE = ("Not run for this request: it needs a model retrained from scratch without "
                     "the images, which the registry builds only when it retrains (the last "
                     "fallback, or a consolidation).")


def _round(v, digits: int = 3):
    return round(float(v), digits) if isinstance(v, (int, float)) and not isinstance(
        v, bool) else None


def fmt(v) -> str:
    """A rounded number for reading: ``0.509``, ``1``, ``-`` for none."""
    return "-" if v is None else f"{v:.3f}".rstrip("0").rstrip(".")


#: The range a check's measured value can take (limits are clipped to it when shown).
RANGES = {"attack_auc": (0.0, 1.0), "probe_auc": (0.0, 1.0), "fnr_vs_original": (0.0, 1.0),
          "fnr_vs_reference": (0.0, 1.0), "ta_drop": (0.0, 1.0),
          "global_risk_vs_original": (0.0, None), "global_risk_vs_reference": (0.0, None)}


def _clip(v, name: str):
    lo, hi = RANGES.get(name, (None, None))
    if v is None:
        return None
    v = max(v, lo) if lo is not None else v
    return min(v, hi) if hi is not None else v


def plain_check(check: dict, n_images: int) -> dict:
    """One gate check in plain words: ``check``, ``question``, ``outcome``, ``measured``,
    ``limit`` and ``explanation``. Numbers are rounded to 3 decimals, tolerances and limits the
    same way, and limits and margins are clipped to the range the measure can take (an attack
    score lies in 0..1: a margin of 0.5 ± 0.6 reads "anything from 0 to 1")."""
    name = str(check.get("name", "?"))
    short, question = QUESTIONS.get(name, (name.replace("_", " "), "An additional check."))
    tol = _round(check.get("tolerance"))
    question = question.format(tol=fmt(tol) if tol is not None else "a margin")
    status = check.get("status")
    row = {"check": short, "question": question, "measured": _round(check.get("value")),
           "limit": _round(_clip(_round(check.get("limit")), name)),
           "compare_to": _round(check.get("compare_to")), "tolerance": tol}
    closeness = name in ("attack_auc", "probe_auc")
    m, c, lim = fmt(row["measured"]), fmt(row["compare_to"]), fmt(row["limit"])
    if closeness and row["compare_to"] is not None and tol is not None:
        lo, hi = _round(_clip(row["compare_to"] - tol, name)), _round(_clip(
            row["compare_to"] + tol, name))
        row["range"] = [lo, hi]
        whole = (lo, hi) == RANGES[name]
        row["limit_text"] = ("anything from 0 to 1 (the whole scale)" if whole else
                             f"between {fmt(lo)} and {fmt(hi)} ({c} ± {fmt(tol)})")
        margin = ("any score at all (the margin covers the whole scale from 0 to 1)" if whole
                  else f"{fmt(lo)} to {fmt(hi)}")
    else:
        row["limit_text"] = lim if row["limit"] is None or tol is None or row[
            "compare_to"] is None else f"at most {lim} ({c} + {fmt(tol)})"
        margin = None
    images = f"{n_images} image{'s' if n_images != 1 else ''}"
    if status == "not_run":
        return row | {"outcome": "not run", "explanation": (
            "Not run: it needs shadow models of the original model, trained once ('medunlearn "
            "registry shadows REG --k 16'); see the per-image membership test below.")}
    if status == "cannot_say":
        return row | {"outcome": "cannot say", "explanation": (
            f"Ran on {images}, but the evidence cannot decide either way; this is not a "
            "pass." + (" See the per-image membership test below." if name == "membership"
                       else ""))}
    if status == "skipped":
        if name == "membership":
            return row | {"outcome": "not run", "explanation": (
                "Not needed: the model was retrained from scratch without the images.")}
        if name.endswith("_vs_reference"):
            return row | {"outcome": "not run", "explanation": NOT_RUN_REFERENCE}
        if closeness:
            return row | {"outcome": "cannot say", "explanation": (
                f"Could not be measured on {images}: too few for this test.")}
        return row | {"outcome": "not run", "explanation": "Could not be computed for this "
                      "model's task (it has no disease classes)."}
    if closeness and tol is not None and tol >= LOW_POWER_TOLERANCE:
        return row | {"outcome": "cannot say", "explanation": (
            f"Measured {m}; with {images} the accepted range is {margin}, so a model that "
            "still remembers them would also be within it. This check cannot say anything for "
            "so few images.")}
    if status == "pass":
        outcome, how = "passed", "within"
    else:
        outcome, how = "failed", "outside"
    if closeness:
        expl = f"Measured {m}: {how} the accepted range {margin} for {images}."
    elif name == "ta_drop":
        expl = f"Accuracy fell by {m} (from {c}); the limit is {lim}."
    else:
        expl = f"Measured {m}, against {c} before; the limit is {row['limit_text']}."
    return row | {"outcome": outcome, "explanation": expl}


#: (label, path in an evaluate_run model entry) of the metrics a certificate shows.
KEY_METRICS = [
    ("Test accuracy", ("utility", "TA")),
    ("Missed diagnoses on the test set (false-negative rate)", ("clinical", "test", "fnr")),
    ("Clinical risk per test patient (weighted cost of its errors; lower is better)",
     ("clinical", "test", "global_risk")),
    ("Accuracy on the forgotten images", ("utility", "forget_accuracy")),
    ("Membership-attack score on the forgotten images (0.5 = guessing)",
     ("privacy", "attack_auc_val")),
]


def key_metrics(metrics: dict | None) -> list[dict]:
    """``[{metric, before, after}]`` for the model before and after the request (rounded)."""
    models = (metrics or {}).get("models") or {}

    def get(model: str, path: tuple) -> float | None:
        cur = models.get(model)
        for p in path:
            if not isinstance(cur, dict):
                return None
            cur = cur.get(p)
        return _round(cur)

    rows = [{"metric": label, "before": get("original", path), "after": get("model", path)}
            for label, path in KEY_METRICS]
    return [r for r in rows if r["before"] is not None or r["after"] is not None]


def when(iso: str | None) -> str:
    """A stored ISO time for reading: ``5 December 2026, 00:50:12 UTC`` (no milliseconds)."""
    from datetime import UTC, datetime

    if not iso:
        return "-"
    try:
        t = datetime.fromisoformat(iso).astimezone(UTC)
    except (TypeError, ValueError):
        return str(iso)
    return f"{t.day} {t:%B %Y, %H:%M:%S} UTC"


def nothing_changed(rows: list[dict]) -> str:
    """One sentence on the before-and-after table: whether any measure changed (3 decimals)."""
    both = [r for r in rows if r["before"] is not None and r["after"] is not None]
    changed = [r["metric"] for r in both if r["before"] != r["after"]]
    if both and not changed:
        return ("Nothing measurable changed: every measure below is the same before and after "
                "(to 3 decimals), as expected when a few images are removed from a model "
                "trained on many; this says nothing either way about whether the images were "
                "forgotten.")
    if changed:
        return f"Measures that changed: {'; '.join(changed)}."
    return ""


#: (words, path in an evaluate_run model entry) of attacks whose higher score means the model
#: gives the forgotten images away more easily.
ATTACKS = [
    ("membership attack (loss)", ("privacy", "attack_auc_val")),
    ("likelihood-ratio attack (LiRA)", ("privacy", "lira_auc")),
    ("internal-feature test", ("representation", "probe_auc")),
]

#: Where a record may hold the average gap between two independent retrainings (the noise floor
#: of the gap to the reference), in points.
SECOND_RETRAINING_GAP = ("second_retraining_gap_pp", "reference_gap_pp", "retrain_noise_gap_pp")

#: An attack score must rise by more than this to count as "stronger" (rounding noise).
STRONGER_BY = 0.005


def _get(models: dict, role: str, path: tuple):
    cur = models.get(role)
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur if isinstance(cur, (int, float)) and not isinstance(cur, bool) else None


def result_warnings(metrics: dict | None) -> list[str]:
    """Results to flag in words even when the gate passed: an attack that got stronger after
    unlearning than on the original model, and a gap to the retrained reference larger than a
    second retraining's (when the record holds that number)."""
    metrics = metrics or {}
    models = metrics.get("models") or {}
    out = []
    for words, path in ATTACKS:
        before, after = _get(models, "original", path), _get(models, "model", path)
        if before is None or after is None or after <= before + STRONGER_BY:
            continue
        ref = _get(models, "reference", path)
        out.append(f"the {words} got stronger after unlearning: its score on the forgotten "
                   f"images rose from {fmt(_round(before))} (original model) to "
                   f"{fmt(_round(after))}"
                   + (f" (a model retrained without them: {fmt(_round(ref))})" if ref is not None
                      else "")
                   + ", so these images are easier to detect than before")
    fid = metrics.get("fidelity") or {}
    gap = fid.get("average_gap_pp")
    floor = next((fid[k] for k in SECOND_RETRAINING_GAP if isinstance(fid.get(k), (int, float))),
                 None)
    if isinstance(gap, (int, float)) and floor is not None and gap > floor:
        out.append(f"the model is on average {gap:.2f} points away from the model retrained "
                   f"without the images, more than a second retraining differs ({floor:.2f} "
                   "points)")
    return out

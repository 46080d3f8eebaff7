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
    "probe_auc": ("Feature probe",
                  "Can a classifier on the model's internal features no longer tell the "
                  "forgotten images from unseen ones (a score near 0.5)?"),
    "fnr_vs_reference": ("Missed diagnoses vs exact retraining",
                         "Does the model miss no more sick patients than a model retrained "
                         "from scratch without the images?"),
    "global_risk_vs_reference": ("Clinical risk vs exact retraining",
                                 "Is its clinical risk no higher than that of a model retrained "
                                 "from scratch without the images?"),
    "forget_changed": ("Anything forgotten",
                       "Did the model's outputs on the forgotten images change at all from the "
                       "model it replaces?"),
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


def plain_check(check: dict, n_images: int) -> dict:
    """One gate check in plain words: ``check``, ``question``, ``outcome``, ``measured``,
    ``limit`` and ``explanation`` (numbers rounded to 3 decimals)."""
    name = str(check.get("name", "?"))
    short, question = QUESTIONS.get(name, (name.replace("_", " "), "An additional check."))
    tol = check.get("tolerance")
    question = question.format(tol=f"{tol:.2f}" if isinstance(tol, (int, float)) else "a margin")
    status = check.get("status")
    row = {"check": short, "question": question, "measured": _round(check.get("value")),
           "limit": _round(check.get("limit")), "compare_to": _round(check.get("compare_to"))}
    closeness = name in ("attack_auc", "probe_auc")
    m, c, lim = fmt(row["measured"]), fmt(row["compare_to"]), fmt(row["limit"])
    row["limit_text"] = (f"{c} ± {fmt(_round(tol))}" if closeness and row["limit"] is not None
                         else lim)
    images = f"{n_images} image{'s' if n_images != 1 else ''}"
    if status == "not_run":
        return row | {"outcome": "not run", "explanation": (
            "Not run: it needs shadow models of the original model, trained once.")}
    if status == "cannot_say":
        return row | {"outcome": "cannot say", "explanation": (
            f"Ran on {images}, but the evidence cannot decide either way; this is not a "
            "pass.")}
    if status == "skipped":
        if name.endswith("_vs_reference"):
            return row | {"outcome": "not run", "explanation": NOT_RUN_REFERENCE}
        if closeness:
            return row | {"outcome": "cannot say", "explanation": (
                f"Could not be measured on {images}: too few for this test.")}
        return row | {"outcome": "not run", "explanation": "Could not be computed for this "
                      "model's task (it has no disease classes)."}
    if closeness and isinstance(tol, (int, float)) and tol >= LOW_POWER_TOLERANCE:
        return row | {"outcome": "cannot say", "explanation": (
            f"Measured {m} against {c}, but with {images} the result is uncertain by "
            f"±{tol:.2f}, so a model that still remembers them would also be within that "
            "margin. This check cannot say anything for so few images.")}
    if status == "pass":
        outcome, how = "passed", "within"
    else:
        outcome, how = "failed", "outside"
    if closeness:
        expl = f"Measured {m} against {c}: {how} the margin of ±{tol:.2f} for {images}."
    elif name == "ta_drop":
        expl = f"Accuracy fell by {m} (from {c}); the limit is {lim}."
    else:
        expl = f"Measured {m}, against {c} before; the limit is {lim}."
    return row | {"outcome": outcome, "explanation": expl}


#: (label, path in an evaluate_run model entry) of the metrics a certificate shows.
KEY_METRICS = [
    ("Test accuracy", ("utility", "TA")),
    ("Missed diagnoses on the test set (false-negative rate)", ("clinical", "test", "fnr")),
    ("Clinical risk per test patient (cost units)", ("clinical", "test", "global_risk")),
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

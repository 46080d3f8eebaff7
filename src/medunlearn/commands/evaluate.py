"""``medunlearn evaluate``: clinical, privacy, representation, bias and efficiency metrics of an
unlearned model, and an optional safety verdict (exit code 3 when the gate fails)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medunlearn.commands._common import DataRoot, Device, fmt
from medunlearn.errors import OutputExistsError
from medunlearn.evaluation.clinical import DEFAULT_C_FN, DEFAULT_C_FP

GATE_FAILED_EXIT = 3


def time_against_retraining(ratio: float | None) -> str:
    """``", 0.25 of retraining's time (4.0x faster)"``; says slower when it was slower."""
    if ratio is None or not ratio > 0:
        return ""
    if ratio < 1:
        how = f"{1 / ratio:.1f}x faster"
    elif ratio > 1:
        how = f"{ratio:.2f}x slower than retraining: no time saved"
    else:
        how = "as long as retraining"
    return f", {ratio:.3f} of retraining's time ({how})"


# Each gate check (names from medunlearn.evaluation.gate) in plain words, and what to try.
_CLINICAL_ADVICE = ("try salun-cra (it never relabels disease-positive images as healthy) or a "
                    "gentler run of the same method (--option lr=... or epochs=... lower)")
GATE_ADVICE = {
    "fnr_vs_original": ("it misses more disease on the test set than the original model did",
                        _CLINICAL_ADVICE),
    "fnr_vs_reference": ("it misses more disease on the test set than the retrained reference",
                         _CLINICAL_ADVICE),
    "global_risk_vs_original": ("its clinical cost per patient (Global Risk) is higher than the "
                                "original model's", _CLINICAL_ADVICE),
    "global_risk_vs_reference": ("its clinical cost per patient (Global Risk) is higher than "
                                 "the retrained reference's", _CLINICAL_ADVICE),
    "ta_drop": ("its test accuracy dropped too far below the original's",
                "give the method more retain data (--retain-budget N, or a larger "
                "retain_budget option), take fewer/smaller steps (--option epochs=... / lr=...) "
                "or try another method (e.g. newton or fisher)"),
    "attack_auc": ("a membership attack separates the forgotten images from unseen ones "
                   "differently than for a model that never saw them (too little forgotten, or "
                   "so much that forgetting itself shows)",
                   "adjust the forgetting strength (--option epochs=... / lr=...) or use "
                   "'medunlearn tune' to match the reference"),
    "probe_auc": ("the forgotten images are still recognisable in the model's internal features "
                  "(linear probe)", "use a method that changes features, e.g. scrub or newton, "
                  "or tune its strength"),
    "forget_changed": ("its outputs on the forgotten images are the original's, or moved far "
                       "less than retraining's: it is indistinguishable from doing nothing",
                       "use a method that changes the model (check its options: a zero or "
                       "tiny learning rate or step does little), tune it, or retrain"),
    "forget_effect": ("compared with the original, the forgotten images kept most of what the "
                      "shadow models say had been memorised of them (less than half of exact "
                      "retraining's drop)", "forget more strongly (more steps, a larger "
                      "learning rate, a method that changes the features), or retrain"),
    "membership": ("per image, the forgotten images still look like images the model was "
                   "trained on (shadow-model membership test), more than exact retraining shows",
                   "forget more strongly (a method that changes the features, more steps or a "
                   "larger learning rate), or retrain"),
}
FALLBACK_ADVICE = ("If no approximate method passes, the exact fallback always removes the "
                   "images: retrain without them ('medunlearn unlearn --method retrain'); in a "
                   "registry, configure retrain as the last method of the chain or run "
                   "'medunlearn registry consolidate'.")


def gate_failures_in_words(checks: list[dict]) -> list[str]:
    """One line per failed check: what failed, in words, the measured numbers, what to try."""
    out = []
    failed = [c for c in checks if c.get("status") == "fail"]
    undecided = [c for c in checks if c.get("status") == "cannot_say"]
    for c in failed or undecided or [c for c in checks
                                     if c.get("status") in ("skipped", "not_run")]:
        if c.get("status") in ("skipped", "not_run"):  # fail_on_skipped: the check did not run
            out.append(f"{c['name']}: could not be checked ({c.get('reason')}); give the "
                       "missing model or data, or set fail_on_skipped = false.")
            continue
        if c.get("status") == "cannot_say":
            out.append(f"{c['name']}: cannot say ({c.get('reason')}). This is not a pass: the "
                       "evidence does not show that the images were forgotten.")
            continue
        words, advice = GATE_ADVICE.get(c["name"], (c["name"], "see docs/evaluation.md"))
        nums = ""
        if c.get("value") is not None and c.get("limit") is not None:
            nums = f" ({c['value']:.4f}, limit {c['limit']:.4f})"
        out.append(f"{c['name']}: {words}{nums}. Next: {advice}.")
    return out


def echo_gate_failure(checks: list[dict], *, err: bool = True) -> None:
    """Print the failed checks in words and the next steps."""
    import textwrap

    for line in gate_failures_in_words(checks):
        typer.secho(textwrap.fill(line, 79, initial_indent="  - ", subsequent_indent="    "),
                    fg="red", err=err)
    typer.secho(textwrap.fill(FALLBACK_ADVICE, 79, initial_indent="  ",
                              subsequent_indent="  "), err=err)


def _row(label: str, metrics: dict, path: tuple[str, ...], roles: list[str]) -> str:
    vals = []
    for role in roles:
        cur = metrics["models"].get(role)
        for p in path:
            cur = cur.get(p) if isinstance(cur, dict) else None
        vals.append(fmt(cur))
    return f"{label:<22}" + "".join(f"{v:>11}" for v in vals)


def print_summary(metrics: dict) -> None:
    """A compact table of the main metrics of each evaluated model."""
    roles = [r for r in ("model", "original", "reference") if metrics["models"].get(r)]
    typer.echo(f"{'metric':<22}" + "".join(f"{r:>11}" for r in roles))
    rows = [("UA", ("utility", "UA")), ("RA", ("utility", "RA")), ("TA", ("utility", "TA")),
            ("test AUC", ("utility", "test_auc")),
            ("balanced acc", ("utility", "balanced_accuracy"))]
    if metrics["models"]["model"].get("clinical"):
        rows += [("test FNR", ("clinical", "test", "fnr")),
                 ("test FPR", ("clinical", "test", "fpr")),
                 ("test Global Risk", ("clinical", "test", "global_risk")),
                 ("forget FNR", ("clinical", "forget", "fnr"))]
    rows += [("MIA-efficacy", ("privacy", "mia_efficacy")),
             ("attack AUC", ("privacy", "attack_auc")),
             ("attack AUC (val)", ("privacy", "attack_auc_val")),
             ("LiRA AUC", ("privacy", "lira_auc")),
             ("probe AUC", ("representation", "probe_auc")),
             ("probe AUC (val)", ("representation", "probe_auc_val")),
             ("ECE (test)", ("calibration", "ece"))]
    if metrics["models"]["model"].get("membership"):
        rows += [("membership z", ("membership", "z")),
                 ("membership p", ("membership", "p_value")),
                 ("membership power", ("membership", "power"))]
    for label, path in rows:
        typer.echo(_row(label, metrics, path, roles))
    fid = metrics.get("fidelity")
    if fid:
        typer.echo(f"average gap to reference: {fmt(fid['average_gap_pp'], 2)} pp; agreement "
                   f"forget {fmt(fid['agreement_forget'], 3)}, "
                   f"test {fmt(fid['agreement_test'], 3)}")
    eff = metrics.get("efficiency") or {}
    if eff.get("unlearn_seconds") is not None:
        typer.echo(f"unlearning took {fmt(eff['unlearn_seconds'], 2)} s"
                   + time_against_retraining(eff.get("rte_ratio")))
    for note in metrics.get("notes", []):
        typer.echo(f"note: {note}")


def evaluate(
    model: Annotated[Path, typer.Option("--model", "-m", help="Unlearn run folder (with "
                                        "forget.csv).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Metrics JSON file to write.")],
    original: Annotated[Path | None, typer.Option(help="Run folder of the model before "
                                                  "unlearning (warned if it is not the one "
                                                  "--model was unlearned from).")] = None,
    reference: Annotated[Path | None, typer.Option(
        help="Run folder of the original retrained without the same forget set ('medunlearn "
        "unlearn --method retrain' with the same --forget and --seed); any other run is "
        "refused.")] = None,
    gate: Annotated[bool, typer.Option("--gate", help="Run the safety gate; exit 3 if it "
                                       "fails.")] = False,
    gate_config: Annotated[Path | None, typer.Option(help="TOML file overriding gate "
                                                     "tolerances (see defaults/gate.toml).")
                           ] = None,
    metadata: Annotated[Path | None, typer.Option(help="CSV of subgroup columns (sex, site, "
                                                  "...) for bias metrics.")] = None,
    metadata_key: Annotated[str, typer.Option(help="Key column of --metadata: index or "
                                              "sha256.")] = "index",
    lira_shadows: Annotated[int, typer.Option(help="Shadow models for the LiRA attack (0 = "
                                              "off; slow).")] = 0,
    lira_epochs: Annotated[int | None, typer.Option(help="Epochs per shadow model (default: "
                                                    "the original recipe's).")] = None,
    c_fn: Annotated[float, typer.Option("--c-fn", help="Cost of a false negative (missed "
                                        "disease).")] = DEFAULT_C_FN,
    c_fp: Annotated[float, typer.Option("--c-fp", help="Cost of a false positive.")
                    ] = DEFAULT_C_FP,
    attack_retain_cap: Annotated[int | None, typer.Option(
        help="Most retain samples the membership attacks may use (default: all; they are cut "
        "into blocks of the test set's size, one attack each, up to 8, averaged).")] = None,
    retain_limit: Annotated[int | None, typer.Option(help="Measure RA on a seeded subset of "
                                                     "this many retain samples (faster on "
                                                     "large datasets; default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of attack subsets and probe folds.")] = 0,
    shadows: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Shadow models of the original ('medunlearn shadows ORIGINAL'): "
        "per-image membership evidence for every model and the gate's membership check "
        "(without them that check is 'not run').")] = None,
    forget: Annotated[Path | None, typer.Option(
        metavar="FILE", help="forget.csv naming the forget set, for a --model without one (the "
        "original scored as 'no unlearning'); default: the --reference's.")] = None,
    forgetting_quality: Annotated[Path | None, typer.Option(
        metavar="FILE", help="A forgetting_quality.json of 'medunlearn verify-forgetting' for "
        "this model's original, method and forget set: added to the record (and to the gate's "
        "forgetting_quality_min check).")] = None,
    data_root: DataRoot = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace an existing --out file.")] = False,
    device: Device = "auto",
) -> None:
    """Evaluate an unlearned model (and compare it with the original and the retrained
    reference); write all metrics to --out."""
    from medunlearn.evaluation.gate import load_tolerances
    from medunlearn.evaluation.record import EvalOptions
    from medunlearn.fileio import atomic_write_json
    from medunlearn.runs import evaluate_run
    from medunlearn.runs.checks import check_original
    from medunlearn.runs.per_example import load_result_for

    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists. Choose another --out file or pass "
                                "--overwrite.")
    if out.exists() and out.is_dir():
        raise OutputExistsError(f"--out {out} is a folder; give a file name such as "
                                f"{out / 'evaluation.json'}.")
    if original is not None and (warning := check_original(model, original)):
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    tolerances = load_tolerances(gate_config) if gate or gate_config else None
    opts = EvalOptions(c_fn=c_fn, c_fp=c_fp, seed=seed, attack_retain_cap=attack_retain_cap,
                       retain_limit=retain_limit,
                       metadata=str(metadata) if metadata else None, metadata_key=metadata_key,
                       lira_shadows=lira_shadows, lira_epochs=lira_epochs, threads=threads,
                       device=device)
    fq_result = None
    if forgetting_quality is not None:  # checked before the (slow) evaluation
        fq_result = load_result_for(forgetting_quality, model)
    metrics = evaluate_run(model, original=original, reference=reference, options=opts,
                           data_root=data_root, gate=tolerances if gate else False,
                           forgetting_quality=fq_result, shadows=shadows, forget=forget)
    atomic_write_json(out, metrics)
    print_summary(metrics)
    typer.echo(f"metrics written to {out} ({metrics['evaluate_seconds']:.1f} s)")
    verdict = metrics.get("gate")
    if verdict is not None:
        typer.echo("safety gate:")
        for c in verdict["checks"]:
            typer.echo(f"  {c['message']}")
        if verdict["passed"]:
            typer.secho("GATE PASSED", fg="green")
        elif verdict.get("status") == "cannot say":
            typer.secho(f"GATE CANNOT SAY ({len(verdict['reasons'])} check(s) undecided): not "
                        "passed; the evidence cannot show the model is safe to deploy.",
                        fg="yellow", err=True)
            echo_gate_failure(verdict["checks"])
            raise typer.Exit(GATE_FAILED_EXIT)
        else:
            typer.secho(f"GATE FAILED ({len(verdict['reasons'])} problem(s)): the model is not "
                        "safe to deploy in place of the original.", fg="red", err=True)
            echo_gate_failure(verdict["checks"])
            raise typer.Exit(GATE_FAILED_EXIT)


def register(app: typer.Typer) -> None:
    app.command()(evaluate)

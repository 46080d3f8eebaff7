"""``medunlearn evaluate``: clinical, privacy, representation, bias and efficiency metrics of an
unlearned model, and an optional safety verdict (exit code 3 when the gate fails)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medunlearn.commands._common import DataRoot, fmt
from medunlearn.errors import OutputExistsError
from medunlearn.evaluation.clinical import DEFAULT_C_FN, DEFAULT_C_FP

GATE_FAILED_EXIT = 3


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
    for label, path in rows:
        typer.echo(_row(label, metrics, path, roles))
    fid = metrics.get("fidelity")
    if fid:
        typer.echo(f"average gap to reference: {fmt(fid['average_gap_pp'], 2)} pp; agreement "
                   f"forget {fmt(fid['agreement_forget'], 3)}, "
                   f"test {fmt(fid['agreement_test'], 3)}")
    eff = metrics.get("efficiency") or {}
    if eff.get("unlearn_seconds") is not None:
        extra = (f", {fmt(eff['rte_ratio'], 3)} of retraining ({fmt(eff['speedup'], 1)}x faster)"
                 if eff.get("rte_ratio") is not None else "")
        typer.echo(f"unlearning took {fmt(eff['unlearn_seconds'], 2)} s{extra}")
    for note in metrics.get("notes", []):
        typer.echo(f"note: {note}")


def evaluate(
    model: Annotated[Path, typer.Option("--model", "-m", help="Unlearn run folder (with "
                                        "forget.csv).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Metrics JSON file to write.")],
    original: Annotated[Path | None, typer.Option(help="Run folder of the model before "
                                                  "unlearning.")] = None,
    reference: Annotated[Path | None, typer.Option(help="Run folder of the model retrained "
                                                   "without the forget set.")] = None,
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
    attack_retain_cap: Annotated[int, typer.Option(help="Retain samples used to train the "
                                                   "membership attack.")] = 2000,
    retain_limit: Annotated[int | None, typer.Option(help="Measure RA on a seeded subset of "
                                                     "this many retain samples (faster on "
                                                     "large datasets; default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of attack subsets and probe folds.")] = 0,
    data_root: DataRoot = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")] = False,
) -> None:
    """Evaluate an unlearned model (and compare it with the original and the retrained
    reference); write all metrics to --out."""
    from medunlearn.evaluation.api import EvalOptions, evaluate_run
    from medunlearn.evaluation.gate import gate as run_gate
    from medunlearn.evaluation.gate import load_tolerances
    from medunlearn.io import atomic_write_json

    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists. Choose another --out file or pass "
                                "--overwrite.")
    if out.exists() and out.is_dir():
        raise OutputExistsError(f"--out {out} is a folder; give a file name such as "
                                f"{out / 'evaluation.json'}.")
    tolerances = load_tolerances(gate_config) if gate or gate_config else None
    opts = EvalOptions(c_fn=c_fn, c_fp=c_fp, seed=seed, attack_retain_cap=attack_retain_cap,
                       retain_limit=retain_limit,
                       metadata=str(metadata) if metadata else None, metadata_key=metadata_key,
                       lira_shadows=lira_shadows, lira_epochs=lira_epochs, threads=threads)
    metrics = evaluate_run(model, original=original, reference=reference, options=opts,
                           data_root=data_root)
    verdict = None
    if gate:
        verdict = run_gate(metrics, tolerances)
        metrics["gate"] = verdict.to_dict()
    atomic_write_json(out, metrics)
    print_summary(metrics)
    typer.echo(f"metrics written to {out} ({metrics['evaluate_seconds']:.1f} s)")
    if verdict is not None:
        typer.echo("safety gate:")
        for c in verdict.checks:
            typer.echo(f"  {c['message']}")
        if verdict.passed:
            typer.secho("GATE PASSED", fg="green")
        else:
            typer.secho(f"GATE FAILED ({len(verdict.reasons)} problem(s)):", fg="red", err=True)
            for r in verdict.reasons:
                typer.secho(f"  {r}", fg="red", err=True)
            raise typer.Exit(GATE_FAILED_EXIT)


def register(app: typer.Typer) -> None:
    app.command()(evaluate)

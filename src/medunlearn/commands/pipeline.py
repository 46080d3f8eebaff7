"""``medunlearn pipeline``: the main job in one command.

Train (or reuse) the original model, retrain the exact reference without the forget set, unlearn
the forget set with a chosen method, then evaluate the result against both and apply the safety
gate. Every step writes its own run folder under ``--out``; rerunning with the same options
reuses finished steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medunlearn.commands._common import Device, data_options
from medunlearn.config import DataSource, ModelConfig, TrainConfig


@data_options
def pipeline(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for all run folders.")],
    data: DataSource,
    width: Annotated[int, typer.Option(help="Base width of resnet18.")] = ModelConfig.width,
    epochs: Annotated[int | None, typer.Option(
        help="Training epochs of the original and the reference (default: at least 10, more on "
        "small datasets).")] = None,
    forget: Annotated[str, typer.Option(help="Forget set, e.g. random:0.1, positive:0.2, "
                                        "hashes:FILE.")] = "random:0.1",
    method: Annotated[str, typer.Option(help="Unlearning method (see 'medunlearn methods').")
                      ] = "salun-cra",
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="Method option key=value (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    retain_limit: Annotated[int | None, typer.Option(
        help="Evaluate RA on a seeded subset of this many retain samples.")] = 2000,
    strict: Annotated[bool, typer.Option("--strict",
                                         help="Exit 3 when the safety gate fails.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo every step.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    device: Device = "auto",
) -> None:
    """Train, retrain the reference, unlearn, evaluate and gate: the whole workflow."""
    from medunlearn.checkpoint import EVALUATION_FILE
    from medunlearn.commands.evaluate import GATE_FAILED_EXIT, echo_gate_failure, print_summary
    from medunlearn.config import parse_option_pairs
    from medunlearn.evaluation.record import EvalOptions
    from medunlearn.fileio import atomic_write_json
    from medunlearn.runs import evaluate_run, run_training, run_unlearning

    tcfg = TrainConfig(epochs=epochs, progress=not quiet, device=device)
    options = parse_option_pairs(option or [])
    original, reference, unlearned = out / "original", out / "retrain", out / method
    if method == "retrain":
        raise typer.BadParameter("the pipeline compares a method with retraining; choose "
                                 "another --method", param_hint="--method")

    typer.secho(f"[1/4] training the original model -> {original}", bold=True)
    m = run_training(data, ModelConfig(width=width), tcfg, seed=seed, out=original,
                     overwrite=overwrite)
    typer.echo(f"      test accuracy {m['splits']['test']['accuracy']:.4f}, AUC "
               f"{m['splits']['test']['auc']:.4f}, {m['train_seconds']:.1f} s"
               + (" (reused)" if m.get("reused") else ""))
    steps = [("2/4", "retraining the reference without the forget set", "retrain", reference,
              {}), ("3/4", f"unlearning with {method}", method, unlearned, options)]
    for tag, what, name, folder, opts in steps:
        typer.secho(f"[{tag}] {what} -> {folder}", bold=True)
        r = run_unlearning(original, method=name, forget=forget, seed=seed, out=folder,
                           options=opts, overwrite=overwrite, data_root=data.data_root,
                           progress=not quiet, device=device)
        typer.echo(f"      forgot {r['forget_count']} images in {r['unlearn_seconds']:.1f} s; "
                   f"forget accuracy {r['forget_accuracy']:.4f}, test accuracy "
                   f"{r['test_accuracy']:.4f}" + (" (reused)" if r.get("reused") else ""))

    typer.secho("[4/4] evaluating against the original and the reference", bold=True)
    metrics = evaluate_run(unlearned, original=original, reference=reference,
                           options=EvalOptions(seed=seed, retain_limit=retain_limit,
                                               device=device),
                           data_root=data.data_root, gate=True)
    verdict = metrics["gate"]
    atomic_write_json(unlearned / EVALUATION_FILE, metrics)
    print_summary(metrics)
    typer.echo("safety gate:")
    for c in verdict["checks"]:
        typer.echo(f"  {c['message']}")
    colour = "green" if verdict["passed"] else "red"
    typer.secho(f"GATE {'PASSED' if verdict['passed'] else 'FAILED'}; all results in "
                f"{unlearned / EVALUATION_FILE}", fg=colour, bold=True)
    if not verdict["passed"]:
        echo_gate_failure(verdict["checks"], err=False)
    if strict and not verdict["passed"]:
        raise typer.Exit(GATE_FAILED_EXIT)


def register(app: typer.Typer) -> None:
    app.command()(pipeline)

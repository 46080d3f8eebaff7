"""``medunlearn experiment`` (run a study grid) and ``medunlearn report`` (tables and figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def experiment(
    config: Annotated[Path, typer.Argument(help="Study file (.yaml or .toml), e.g. "
                                           "experiments/clinical_risk.yaml.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder (rerun with the same "
                                      "folder to resume).")],
    backend: Annotated[str, typer.Option(help="local (one job at a time) or ray.")] = "local",
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Ray cluster address (e.g. auto or ray://host:10001); without it "
        "--backend ray starts a local Ray.")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all).")
                        ] = None,
    cpus_per_task: Annotated[int, typer.Option(help="CPUs (and torch threads) per Ray task.")
                             ] = 1,
    data_root: Annotated[str | None, typer.Option(
        "--data-root", help="Folder with the MedMNIST .npz files (overrides the study file; "
        "default $MEDMNIST_ROOT).")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Run only these seeds, e.g. 0 or 0,1 (overrides the study's list; finished cells "
        "are shared with runs of the full list).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the jobs and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run (or resume) a grid of unlearning experiments into one results table."""
    import dataclasses

    from medunlearn.commands._common import parse_int_list
    from medunlearn.errors import ConfigError
    from medunlearn.experiments import load_experiment, run_experiment
    from medunlearn.experiments.runner import BACKENDS
    from medunlearn.experiments.store import CSV_FILE, DB_FILE

    if backend not in BACKENDS:
        raise ConfigError(f"Unknown --backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    cfg = load_experiment(config)
    if data_root:
        cfg = dataclasses.replace(cfg, data_root=data_root)
    if seeds:
        picked = parse_int_list(seeds, "--seeds")
        if not picked or min(picked) < 0:
            raise ConfigError(f"--seeds takes non-negative integers such as 0,1; got {seeds!r}.")
        cfg = dataclasses.replace(cfg, seeds=tuple(dict.fromkeys(picked)))
    originals, references, cells = cfg.plan()
    typer.echo(f"{cfg.name}: {len(originals)} original model(s), {len(references)} retrained "
               f"reference(s), {len(cells)} cell(s) ({len(cfg.methods)} method(s) x "
               f"{len(cfg.datasets)} dataset(s) x {len(cfg.augment)} augmentation(s) x "
               f"{len(cfg.forget)} forget set(s) x {len(cfg.seeds)} seed(s)), and "
               f"{len(references)} do-nothing row(s): the original scored like a method.")
    if dry_run:
        for c in cells:
            typer.echo(f"  {c.key}  {c.slug}")
        return
    summary = run_experiment(cfg, out, backend=backend, ray_address=ray_address,
                             num_cpus=num_cpus, cpus_per_task=cpus_per_task, progress=not quiet)
    typer.echo(f"{summary.completed} cell(s) finished now, {summary.already_done} earlier, "
               f"{len(summary.failed)} failed, in {summary.seconds:.1f} s. Results: "
               f"{out / DB_FILE} and {out / CSV_FILE}.")
    _print_summary(cfg, out)
    if summary.failed:
        for f in summary.failed:
            typer.secho(f"  failed {f['kind']} {f['slug']}: {f['error']} (log: {f['log']})",
                        err=True, fg="red")
        typer.echo("Rerun the same command to retry the failed jobs.", err=True)
        raise typer.Exit(1)


def _print_summary(cfg, out: Path) -> None:
    """Key metrics per method (mean over seeds) of this study's finished cells."""
    from medunlearn.experiments.report import summary_text
    from medunlearn.experiments.store import ResultsStore
    from medunlearn.experiments.tables import study_rows

    with ResultsStore(out, create=False) as store:
        rows = study_rows(store.rows(), cfg)
    if not rows:
        return
    typer.echo("\nSummary (mean over seeds; * = best in the column, as in the report; the "
               "glossary follows):" + summary_text(rows))
    typer.echo(f"\nFull tables and figures: medunlearn report {out} --study "
               f"{cfg.source or 'STUDY'} --out REPORT_DIR")


def report(
    results: Annotated[Path, typer.Argument(help="Results folder of 'medunlearn experiment' "
                                            "(or its results.sqlite).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.html, report.md "
                                      "and the figures.")],
    title: Annotated[str | None, typer.Option(help="Report title.")] = None,
    study: Annotated[Path | None, typer.Option(
        help="Study file (.yaml or .toml): report only its cells, e.g. when several studies "
             "share one results folder.")] = None,
) -> None:
    """Write an HTML page (figures embedded) and a Markdown report of an experiment."""
    from medunlearn.experiments import load_experiment
    from medunlearn.experiments.report import write_report

    cfg = load_experiment(study) if study is not None else None
    paths = write_report(results, out, title=title, study=cfg)
    typer.echo(f"report: {paths['html']} and {paths['markdown']} ({paths['rows']} rows, "
               f"{len(paths['figures'])} figures"
               + (f", {paths['missing']} cell(s) of the study not run yet" if paths["missing"]
                  else "") + ")")


def register(app: typer.Typer) -> None:
    app.command()(experiment)
    app.command()(report)

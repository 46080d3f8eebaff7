"""``medunlearn shadows``: train K shadow models for a run folder, once, with its own recipe
(the evidence behind ``evaluate --shadows`` and the gate's ``membership`` check)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medunlearn.commands._common import DataRoot, Device


def shadows(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder of the model (from "
                                        "'medunlearn train') whose shadows to train.")],
    k: Annotated[int, typer.Option("--k", metavar="K", help="Number of shadow models (at least "
                                   "4; 16 to 32 recommended). Every training image is trained "
                                   "on by half of them.")] = 16,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR", help="Folder of the "
                                             "shadow set (default: RUN/shadows).")] = None,
    seed: Annotated[int | None, typer.Option(metavar="INT", help="Base seed of the design and "
                                             "of every shadow (default: the run's seed).")
                    ] = None,
    data_root: DataRoot = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a folder holding shadows of another model, K or seed "
        "(shadows of this one are resumed either way).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    device: Device = "auto",
) -> None:
    """Train K shadow models on balanced random halves of RUN's training images, with RUN's
    own recipe (resumable: finished shadows are reused). Then evaluate with --shadows DIR."""
    import time

    from medunlearn.evaluation.companions import MIN_SHADOWS, balanced_halves
    from medunlearn.runs.shadows import default_folder, shadows_for_run

    if k < MIN_SHADOWS:
        balanced_halves(1, k, seed=0)  # raises the explanatory error before loading anything
    dest = out or default_folder(run)
    t0 = time.perf_counter()
    cs = shadows_for_run(run, k=k, out=dest, seed=seed, device=device, threads=threads,
                         data_root=data_root, overwrite=overwrite, progress=not quiet)
    secs = list(cs.manifest.get("n_in", []))
    typer.echo(f"{cs.k} shadow models of {run} in {dest} ({time.perf_counter() - t0:.0f} s; "
               f"each trained on {min(secs)}-{max(secs)} of {cs.membership.shape[1]} images)")
    typer.echo(f"use them: medunlearn evaluate --model UNLEARN_RUN --original {run} "
               f"--shadows {dest} --gate --out evaluation.json")


def register(app: typer.Typer) -> None:
    app.command()(shadows)

"""``medunlearn shadows``: train K companion models for a run folder, once, with its own recipe:
shadow models (the evidence behind ``evaluate --shadows`` and the gate's ``membership`` check)
or, with ``--kind kfold``, K-fold models (the out-of-fold targets of ``oracle-match``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medunlearn.commands._common import DataRoot, Device


def shadows(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder of the model (from "
                                        "'medunlearn train') whose shadows to train.")],
    kind: Annotated[str, typer.Option("--kind", metavar="KIND", help="shadow: models on "
                                      "balanced random halves (membership evidence for "
                                      "'evaluate --shadows'); kfold: K models each trained "
                                      "without one fold (out-of-fold targets of the "
                                      "oracle-match method).")] = "shadow",
    k: Annotated[int | None, typer.Option("--k", metavar="K", help="Number of models. Shadows: "
                                          "at least 4, 16 to 32 recommended, default 16 (every "
                                          "image is trained on by half of them). K-fold: at "
                                          "least 2, default 5.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR", help="Folder of the "
                                             "set (default: RUN/shadows, or RUN/kfold for "
                                             "--kind kfold).")] = None,
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
    """Train K companion models of RUN with RUN's own recipe, once (resumable: finished models
    are reused): shadow models on balanced random halves of its training images (then evaluate
    with --shadows DIR), or with --kind kfold K models each without one fold (then unlearn with
    --method oracle-match, which reads RUN/kfold). Both were trained on every image a later
    request may forget: delete and rebuild them for the new model after a request."""
    import time

    from medunlearn.errors import ConfigError
    from medunlearn.evaluation.companions import KFOLD, KINDS, SHADOW, balanced_halves, kfold_masks
    from medunlearn.runs.shadows import companions_for_run, default_folder

    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    k = k if k is not None else (16 if kind == SHADOW else 5)
    design = balanced_halves if kind == SHADOW else kfold_masks
    design(max(k, 1), k, seed=0)  # raises the explanatory error before loading anything
    dest = out or default_folder(run, kind)
    t0 = time.perf_counter()
    cs = companions_for_run(run, kind=kind, k=k, out=dest, seed=seed, device=device,
                            threads=threads, data_root=data_root, overwrite=overwrite,
                            progress=not quiet)
    secs = list(cs.manifest.get("n_in", []))
    what = "shadow" if kind == SHADOW else "K-fold"
    typer.echo(f"{cs.k} {what} models of {run} in {dest} ({time.perf_counter() - t0:.0f} s; "
               f"each trained on {min(secs)}-{max(secs)} of {cs.membership.shape[1]} images)")
    if kind == KFOLD:
        folds = "" if out is None else f" --folds {dest}"
        typer.echo(f"use them: medunlearn unlearn --model {run} --method oracle-match{folds} "
                   "--forget SPEC --out UNLEARN_RUN")
    else:
        typer.echo(f"use them: medunlearn evaluate --model UNLEARN_RUN --original {run} "
                   f"--shadows {dest} --gate --out evaluation.json")


def register(app: typer.Typer) -> None:
    app.command()(shadows)

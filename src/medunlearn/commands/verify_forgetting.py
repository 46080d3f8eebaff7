"""``medunlearn verify-forgetting``: per-example forgetting quality from N unlearned and N
retrained models (the NeurIPS 2023 unlearning challenge's score, on a CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medunlearn.commands._common import DataRoot, Device, fmt
from medunlearn.commands.unlearn import Forget, MethodName, Model, Options


def verify_forgetting(
    model: Model,
    forget: Forget,
    method: MethodName,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Output folder: one run "
                                      "folder per model (finished ones are reused, so an "
                                      "interrupted check resumes and methods checked into the "
                                      "same folder share the retrained models) and "
                                      "LABEL/forgetting_quality.json.")],
    n: Annotated[int, typer.Option("--n", metavar="N", help="Unlearned and retrained models "
                                   "each (at least 3).")] = 16,
    seed: Annotated[int, typer.Option(metavar="INT", help="Seeds the forget set; unlearning runs "
                                      "use seed+i, retraining runs seed+100000+i.")] = 0,
    option: Options = None,
    label: Annotated[str | None, typer.Option(
        metavar="NAME", help="Folder of the unlearned runs under --out (default: the method). "
        "Give each option set its own label to compare them against the same retrained "
        "models.")] = None,
    backend: Annotated[str, typer.Option(help="local (one run after another) or ray (one CPU "
                                         "per run; pip install ray).")] = "local",
    ray_address: Annotated[str | None, typer.Option(
        metavar="ADDR", help="Ray cluster address (default: start a local Ray).")] = None,
    retain_limit: Annotated[int | None, typer.Option(
        metavar="N", help="Retain accuracy on a seeded subset of this many retain images.")]
    = 2000,
    data_root: DataRoot = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace run folders in --out that hold a run of another "
        "configuration (another model, forget set, option or version); finished runs of this "
        "one are reused either way.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    device: Device = "auto",
) -> None:
    """Prove forgetting per example: train N unlearned and N retrained models, and score how
    well each forget image's outputs tell them apart (epsilon, forgetting quality, U-LiRA)."""
    from medunlearn.config import parse_option_pairs
    from medunlearn.evaluation.forgetting_quality import RESULT_FILE, check_n, mismatch_reading
    from medunlearn.runs import verify_forgetting as run_check

    check_n(n)
    r = run_check(model, forget=forget, method=method, out=out, n=n, seed=seed,
                  options=parse_option_pairs(option or []), device=device, data_root=data_root,
                  progress=not quiet, backend=backend, ray_address=ray_address,
                  retain_limit=retain_limit, overwrite=overwrite, label=label)
    lo, hi = r["forgetting_quality_ci"]
    typer.echo(f"{method}: {r['forget']['count']} forget images, N = {n} unlearned + {n} "
               f"retrained models ({r['runs']['reused']} reused), {r['wall_seconds']:.0f} s")
    typer.echo(f"forgetting quality {fmt(r['forgetting_quality'])} "
               f"[{int(r['ci_level'] * 100)}% CI {fmt(lo)}, {fmt(hi)}]; retraining itself "
               f"scores ~{fmt(r.get('forgetting_quality_null'))} at this N "
               f"(ratio {fmt(r.get('forgetting_quality_vs_null'))}); adjusted for RA/TA "
               f"{fmt(r.get('forgetting_quality_adjusted'))}")
    typer.echo(f"epsilon median {fmt(r['epsilon_median'])}, mean {fmt(r['epsilon_mean'])}, "
               f"{r['epsilon_capped_fraction']:.0%} at the cap; U-LiRA accuracy "
               f"{fmt(r.get('ulira_accuracy'))} (0.5 = indistinguishable)")
    reading = mismatch_reading(r.get("spread_ratio"), r.get("confidence_shift"))
    if reading and not r.get("identical_unlearned_models"):
        typer.echo(f"against retraining: {reading}")
    if r.get("note"):
        typer.echo(f"note: {r['note']}")
    typer.echo(f"written: {out / r['label'] / RESULT_FILE}")


def register(app: typer.Typer) -> None:
    app.command("verify-forgetting")(verify_forgetting)

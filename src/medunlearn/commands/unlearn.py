"""``medunlearn unlearn``, ``medunlearn methods`` and ``medunlearn tune``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medunlearn.commands._common import DataRoot, Device, fmt
from medunlearn.errors import ConfigError

Model = Annotated[Path, typer.Option("--model", "-m", metavar="RUN", help="Run folder of the "
                                     "trained model (output of 'medunlearn train' or "
                                     "'unlearn').")]
MethodName = Annotated[str, typer.Option("--method", metavar="NAME", help="Unlearning method "
                                         "(see 'medunlearn methods').")]
Forget = Annotated[str, typer.Option(
    "--forget", metavar="SPEC", help="Samples to forget: random:0.2, random:0.2:stratified, "
    "class:K, positive:0.3, negative:0.3, indices:FILE or hashes:FILE.")]
Seed = Annotated[int, typer.Option(metavar="INT",
                                   help="Seeds the forget-set choice and the method.")]
Options = Annotated[list[str] | None, typer.Option(
    "--option", "-O", metavar="KEY=VALUE", help="Method option key=value (repeatable), e.g. "
    "--option lr=0.01.")]
Exclude = Annotated[Path | None, typer.Option(
    "--exclude", metavar="FILE", help="File of training indices forgotten earlier (one per "
    "line, or a forget.csv): in neither the forget nor the retain set.")]


def _read_exclude(path: Path | None) -> list[int] | None:
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"--exclude file {path} does not exist.")
    if path.name.endswith(".csv"):
        from medunlearn.checkpoint import read_indices

        return read_indices(path)
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"--exclude file {path} is not UTF-8 text; give one index per line, "
                          "or a forget.csv.") from None
    for n, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            try:
                out.append(int(text))
            except ValueError:
                raise ConfigError(f"--exclude {path}: line {n} ({text!r}) is not an integer "
                                  "index.") from None
    return out


def unlearn(
    model: Model,
    method: MethodName,
    forget: Forget,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Output run folder.")],
    seed: Seed = 0,
    option: Options = None,
    retain_budget: Annotated[int | None, typer.Option(
        metavar="N", help="Max retain samples per epoch, for methods that take one (retrain and "
        "gradient-ascent ignore it).")] = None,
    exclude: Exclude = None,
    folds: Annotated[Path | None, typer.Option(
        "--folds", metavar="DIR", help="K fold models of RUN, for methods that read them "
        "(oracle-match; default RUN/kfold, built by 'medunlearn shadows RUN --kind kfold').")
    ] = None,
    data_root: DataRoot = None,
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace an existing output folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    device: Device = "auto",
) -> None:
    """Make a trained model forget training samples; write a run folder to --out."""
    from medunlearn.config import parse_option_pairs
    from medunlearn.methods.base import takes_retain_budget
    from medunlearn.runs import run_unlearning

    metrics = run_unlearning(model, method=method, forget=forget, seed=seed, out=out,
                             options=parse_option_pairs(option or []),
                             exclude=_read_exclude(exclude), retain_budget=retain_budget,
                             overwrite=overwrite, data_root=data_root, progress=not quiet,
                             device=device, folds=folds)
    typer.echo(f"{method}: forgot {metrics['forget_count']} samples, retained "
               f"{metrics['retain_count']}")
    if retain_budget is not None and not takes_retain_budget(method):
        typer.echo(f"note: {method} takes no retain budget; --retain-budget was not applied")
    typer.echo(f"accuracy  forget {fmt(metrics['forget_accuracy'])}  retain "
               f"{fmt(metrics['retain_accuracy'])}  val {fmt(metrics['val_accuracy'])}  test "
               f"{fmt(metrics['test_accuracy'])}")
    ratio = metrics.get("time_ratio_to_original_training")
    ratio_txt = f" ({ratio:.1%} of the original training time)" if ratio else ""
    typer.echo(f"time {metrics['unlearn_seconds']:.2f} s{ratio_txt}, CPU "
               f"{metrics['cpu_seconds']:.2f} s, {metrics['steps']} steps, peak memory "
               f"{metrics['peak_memory_mb']:.0f} MB; run folder: {out}")


def methods(
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "-d", metavar="FLAG", help="Show the values 'medunlearn unlearn' uses for "
        "models trained on this dataset (e.g. pneumoniamnist); default: the dataset-independent "
        "defaults.")] = None,
) -> None:
    """List the unlearning methods with one-line summaries and the options they run with."""
    import dataclasses
    import textwrap

    from medunlearn.methods import get_method_class, method_names
    from medunlearn.methods.base import default_options, load_defaults

    def say(text: str, indent: int = 0) -> None:
        typer.echo(textwrap.fill(text, 79, initial_indent=" " * indent,
                                 subsequent_indent=" " * indent, break_on_hyphens=False))

    tuned = sorted(k for k, v in load_defaults().items()
                   if isinstance(v, dict) and k != "default")
    if dataset is not None:
        from medunlearn.data import get_info

        dataset = get_info(dataset).flag  # unknown names: one-paragraph error with the list
        say(f"Options used for models trained on {dataset} (method Config < "
            "defaults/methods.toml [default] < "
            + (f"[{dataset}]" if dataset in tuned else f"no [{dataset}] section") + "):")
    else:
        say("Dataset-independent defaults (method Config < defaults/methods.toml [default]); "
            "per-dataset values differ for " + ", ".join(tuned) + ": pass --dataset to see "
            "them.")
    for name in method_names():
        cls = get_method_class(name)
        typer.echo(f"{name:<16} {cls.summary}")
        own = default_options(name, dataset)
        base = default_options(name)
        opts = dataclasses.asdict(cls.Config()) | own
        if opts:
            say(", ".join(
                f"{k}={v}" + ("*" if dataset and k in own and own[k] != base.get(k) else "")
                for k, v in opts.items()), 17)
    typer.echo("\nOverride with --option key=value." + (
        f" * = set for {dataset} in defaults/methods.toml." if dataset else ""))


def _float_list(text: str | None) -> list[float]:
    try:
        return [float(t) for t in (text or "").split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--lrs takes comma-separated numbers such as 0.01,0.003; got "
                          f"{text!r}.") from None


def _int_list(text: str | None) -> list[int]:
    try:
        return [int(t) for t in (text or "").split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--epochs takes comma-separated integers such as 1,2,4; got "
                          f"{text!r}.") from None


def tune(
    model: Model,
    method: MethodName,
    forget: Forget,
    reference: Annotated[Path, typer.Option(
        "--reference", help="A 'retrain' run folder for the same forget set and seed.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write: .json for JSON, "
                                      "anything else a TOML snippet for methods.toml.")],
    seed: Seed = 0,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", "-g", metavar="KEY=V1,V2", help="Values of one option to search, e.g. "
        "--grid lr=0.003,0.01 --grid retain_budget=1024,none (repeatable; the product is "
        "searched). Default: the method's grid in defaults/tuning.toml.")] = None,
    lrs: Annotated[str | None, typer.Option(help="Learning rates, e.g. 0.003,0.01,0.03 "
                                            "(short for --grid lr=...).")] = None,
    epochs: Annotated[str | None, typer.Option(help="Epoch counts, e.g. 1,2,4 (short for "
                                               "--grid epochs=...).")] = None,
    tolerance: Annotated[float | None, typer.Option(
        help="Scores within this of the best tie; the cheapest tie (fewest steps) wins. "
        "Default: defaults/tuning.toml's recipe.")] = None,
    shadows: Annotated[Path | None, typer.Option(
        "--shadows", help="Shadow models of the original ('medunlearn shadows MODEL'): also "
        "reject points the paired forget-effect test fails (their forgotten images still "
        "look remembered).")] = None,
    option: Options = None,
    exclude: Exclude = None,
    data_root: DataRoot = None,
) -> None:
    """Choose a method's options by closeness to a retrained reference (validation + forget
    only), never a point that did nothing."""
    from medunlearn.config import parse_option_pairs
    from medunlearn.fileio import atomic_write_json, atomic_write_text
    from medunlearn.runs import tune_method
    from medunlearn.tuning import parse_grid, tune_snippet

    result = tune_method(model, method=method, forget=forget, reference=reference, seed=seed,
                         grid=parse_grid(grid or []), lrs=_float_list(lrs),
                         epochs=_int_list(epochs), tolerance=tolerance, shadows=shadows,
                         options=parse_option_pairs(option or []),
                         exclude=_read_exclude(exclude), data_root=data_root)
    if out.suffix == ".json":
        atomic_write_json(out, result)
    else:
        atomic_write_text(out, tune_snippet(result))
    keys = list(result["grid_spec"])
    head = " ".join(f"{k:>13}" for k in keys)
    typer.echo(f"{head} {'score':>7} {'forget':>7} {'val':>7} {'agree':>7} {'moved':>6} "
               f"{'steps':>6}")

    def line(cells: str, r: dict, steps: str, note: str = "") -> str:
        moved = "-" if r.get("moved") is None else f"{r['moved']:.2f}"
        return (f"{cells} {fmt(r['score']):>7} {fmt(r['forget_accuracy']):>7} "
                f"{fmt(r['val_accuracy']):>7} {fmt(r['agreement']):>7} {moved:>6} {steps:>6}"
                f"{note}")

    for r in result["grid"]:
        cells = " ".join(f"{'none' if r['options'][k] is None else r['options'][k]!s:>13}"
                         for k in keys)
        typer.echo(line(cells, r, str(r["steps"]), f"  rejected: {r['rejected']}"
                        if r.get("rejected") else ""))
    typer.echo(line(f"{'original (no unlearning)':>{max(13 * len(keys) + len(keys) - 1, 24)}}",
                    result["do_nothing"], "0"))
    chosen = ", ".join(f"{k}={'none' if v is None else v}" for k, v in result["chosen"].items())
    typer.echo(f"chosen: {chosen or 'the defaults'} (lower score = closer to the reference; "
               f"ties within {result['tolerance']:g} go to the fewest steps; 'moved' = shift "
               f"from the original on the forget set as a share of retraining's, below "
               f"{result['min_move']:g} a point is rejected); written to {out}")
    if result.get("warning"):
        typer.echo(f"warning: {result['warning']}", err=True)


def register(app: typer.Typer) -> None:
    app.command()(unlearn)
    app.command()(methods)
    app.command()(tune)

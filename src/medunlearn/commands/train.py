"""``medunlearn train`` and ``medunlearn datasets``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medunlearn.commands._common import DataRoot, Device, data_options, fmt
from medunlearn.config import DataSource, ModelConfig, TrainConfig


@data_options
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output run folder.")],
    data: DataSource,
    arch: Annotated[str, typer.Option(
        help="auto, resnet18, tv-resnet18 or tv-resnet50.")] = "auto",
    width: Annotated[int, typer.Option(help="Base width of resnet18 (64 = full width).")] = 16,
    epochs: Annotated[int | None, typer.Option(
        help="Training epochs (default: at least 10, more on small datasets).")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = TrainConfig.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = TrainConfig.lr,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = TrainConfig.weight_decay,
    class_weights: Annotated[str, typer.Option(help="balanced or none.")] = "balanced",
    select: Annotated[str, typer.Option(help="Checkpoint kept: val_auc, val_acc, val_loss or "
                                        "last.")] = "val_auc",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    precision: Annotated[str, typer.Option(help="auto (bf16 where the CPU has it), fp32 or "
                                           "bf16.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace an existing output folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    device: Device = "auto",
    # -- sharded training (issue 25; medunlearn.sharding) --
    shards: Annotated[int | None, typer.Option(
        help="Train S constituent models, each on its own disjoint shard (patients never "
             "split), deployed as the mean of their probabilities; 'sisa' then forgets by "
             "retraining only the affected shard.")] = None,
    slices: Annotated[int | None, typer.Option(
        help="With --shards: R slices per shard, trained incrementally with a checkpoint after "
             "each (default 1).")] = None,
    backend: Annotated[str, typer.Option(
        help="With --shards: local (shards one after another) or ray (in parallel on Ray "
             "workers; the same weights).")] = "local",
    ray_address: Annotated[str | None, typer.Option(
        help="With --backend ray: a Ray cluster address (default: start a local Ray).")] = None,
    num_cpus: Annotated[int | None, typer.Option(
        help="With --backend ray: CPUs of the local Ray (default: all).")] = None,
) -> None:
    """Train a classifier and write model.safetensors, config.json and metrics.json to --out."""
    from medunlearn.config import check_seed
    from medunlearn.errors import ConfigError
    from medunlearn.runs import run_training

    check_seed(seed)

    if shards is None and (slices is not None or backend != "local" or ray_address
                           or num_cpus):
        raise ConfigError("--slices, --backend, --ray-address and --num-cpus apply to sharded "
                          "training: add --shards S (e.g. --shards 4 --slices 4).")
    if shards is not None:  # before loading any data
        from medunlearn.executors import BACKENDS
        from medunlearn.sharding import check_count

        check_count(shards, "--shards")
        check_count(1 if slices is None else slices, "--slices")
        if backend not in BACKENDS:
            raise ConfigError(f"Unknown --backend {backend!r}; choose one of "
                              f"{', '.join(BACKENDS)}.")
    model = ModelConfig(arch=arch, width=width)
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                       class_weights=class_weights, select=select, threads=threads,
                       precision=precision, device=device,
                       progress=not quiet)
    if shards is not None:
        from medunlearn.runs import run_sharded_training

        metrics = run_sharded_training(data, model, tcfg, seed=seed, out=out, shards=shards,
                                       slices=slices or 1, backend=backend,
                                       ray_address=ray_address, num_cpus=num_cpus,
                                       overwrite=overwrite)
    else:
        metrics = run_training(data, model, tcfg, seed=seed, out=out, overwrite=overwrite)
    if metrics.get("reused"):
        typer.echo(f"{out} already holds this exact run; nothing retrained "
                   "(--overwrite redoes it).")
    typer.echo(f"{'split':<6} {'accuracy':>9} {'AUC':>7}  per-class recall")
    for name, m in metrics["splits"].items():
        rec = ", ".join(fmt(r, 3) for r in m["per_class_recall"])
        typer.echo(f"{name:<6} {fmt(m['accuracy']):>9} {fmt(m['auc']):>7}  [{rec}]")
    if "shards" in metrics:
        sh = metrics["shards"]
        typer.echo(f"{sh['count']} shards x {sh['slices']} slice(s), trained in "
                   f"{metrics['train_seconds']:.1f} s (per shard: "
                   f"{', '.join(f'{t:.1f}' for t in sh['shard_seconds'])} s); run folder: {out}")
        return
    typer.echo(f"trained in {metrics['train_seconds']:.1f} s (best epoch {metrics['best_epoch']})"
               f"; run folder: {out}")


def datasets(data_root: DataRoot = None) -> None:
    """List the MedMNIST 2D datasets, their tasks and sizes, and which files are here."""
    import textwrap

    from medunlearn.commands._common import bundled_data_root
    from medunlearn.data import DEFAULT_POSITIVE_CLASSES, dataset_flags, get_info
    from medunlearn.data.files import resolve_root

    root, origin = resolve_root(data_root)
    if data_root is None and root.resolve() == bundled_data_root():
        origin = "the bundled data next to this checkout, as scripts/env.sh finds it"
    typer.echo(f"data folder: {root} (from {origin})")
    typer.echo(f"{'dataset':<16} {'task':<26} {'ch':>2} {'classes':>7}  {'local sizes':<12} "
               "disease classes")
    missing = 0
    for flag in dataset_flags():
        info = get_info(flag)
        here = [n for n in info.sizes if (root / info.file_name(n)).is_file()]
        missing += not here
        pos = DEFAULT_POSITIVE_CLASSES.get(flag)
        typer.echo(f"{flag:<16} {info.task:<26} {info.n_channels:>2} {info.num_classes:>7}  "
                   f"{','.join(map(str, here)) or '-':<12} {list(pos) if pos else '-'}")
    if missing:
        typer.echo(textwrap.fill(
            f"'-' = no file in {root}. medunlearn downloads a missing file on first use where a "
            "network exists; otherwise pass --data-root DIR (or set MEDMNIST_ROOT) to a folder "
            "that holds it.", 79))


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(datasets)

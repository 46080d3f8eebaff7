"""Train a run folder: build, train, evaluate, write every artefact atomically."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from medunlearn.checkpoint import (
    CONFIG_FILE,
    CURVE_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    finished_run_metrics,
    save_weights,
    write_index_csv,
)
from medunlearn.config import DataConfig, ModelConfig, TrainConfig
from medunlearn.config import train_recipe as recipe
from medunlearn.data import DataSource, MedDataset, load_dataset
from medunlearn.fileio import atomic_write_json, fingerprint, staged_output
from medunlearn.loop import Runtime
from medunlearn.plots import training_curve
from medunlearn.provenance import environment, now_iso
from medunlearn.training import (
    evaluate_split,
    resolve_epochs,
    train_model,
    validate_train_config,
)


def write_manifest(path: Path, dataset: MedDataset) -> None:
    """``index,sha256,label`` (and ``patient_id`` where the data has patient ids) of every
    training sample: hashes, never pixels."""
    write_index_csv(path, dataset, range(len(dataset.train)), patients=True)


def split_metrics(model, dataset: MedDataset, names: tuple[str, ...] = ("train", "val", "test"),
                  *, runtime: Runtime | None = None, cache=None) -> dict:
    """:func:`medunlearn.training.evaluate_split` of each named split."""
    kw = {"runtime": runtime} if runtime is not None else {}
    return {name: evaluate_split(model, dataset.splits[name], cache=cache, **kw)
            for name in names}


class Prepared(NamedTuple):
    """What :func:`prepare_training` returns."""

    dataset: MedDataset
    train_cfg: TrainConfig  # validated, ``epochs`` resolved
    key: str  # the run's fingerprint
    previous: dict | None  # the metrics of a finished run of it at ``out`` (reused), else None


def prepare_training(source: DataSource | DataConfig, model_cfg: ModelConfig,
                     train_cfg: TrainConfig, *, seed: int, out: Path, overwrite: bool,
                     dataset: MedDataset | None = None,
                     extra: Callable[[TrainConfig], dict] | None = None) -> Prepared:
    """What every training run does before training: load the data (unless given), validate the
    recipe and resolve its epochs (recorded, so that retraining repeats it exactly), fingerprint
    the run (``extra``: more fields from the resolved recipe, e.g. a sharded run's S and R), and
    find a finished run of the same fingerprint at ``out`` (unless ``overwrite``)."""
    dataset = dataset or load_dataset(source, seed=seed)
    validate_train_config(train_cfg)
    train_cfg = dataclasses.replace(train_cfg,
                                    epochs=resolve_epochs(train_cfg.epochs, len(dataset.train)))
    key = fingerprint({"kind": "train", "data": dataset.identity(),
                       "model": dataclasses.asdict(model_cfg), "train": recipe(train_cfg),
                       "seed": seed} | (extra(train_cfg) if extra is not None else {}))
    previous = None if overwrite else finished_run_metrics(out, key)
    return Prepared(dataset, train_cfg, key,
                    None if previous is None else previous | {"reused": True})


def run_training(source: DataSource | DataConfig, model_cfg: ModelConfig,
                 train_cfg: TrainConfig, *, seed: int, out: str | os.PathLike,
                 overwrite: bool = False, dataset: MedDataset | None = None) -> dict:
    """Train a model and write a complete run folder at ``out``.

    If ``out`` already holds a finished run with the same configuration, nothing is retrained
    and its metrics are returned (``metrics["reused"] = True``).

    Args:
        source: The data (:class:`~medunlearn.data.DataSource`, or MedMNIST by a DataConfig),
            loaded with ``seed`` unless ``dataset`` is given already loaded.

    Returns:
        The metrics written to ``metrics.json``.
    """
    out = Path(out)
    dataset, train_cfg, key, previous = prepare_training(
        source, model_cfg, train_cfg, seed=seed, out=out, overwrite=overwrite, dataset=dataset)
    if previous is not None:
        return previous
    rt = Runtime.create(train_cfg.device, train_cfg.precision, train_cfg.threads)
    with staged_output(out, overwrite=overwrite, what="run") as stage:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        fit, spec = train_model(dataset, model_cfg, train_cfg, seed=seed, runtime=rt)
        wall = time.perf_counter() - t0
        metrics = {
            "splits": split_metrics(fit.model, dataset, runtime=rt),
            "best_epoch": fit.best_epoch,
            "steps": fit.steps,
            "train_seconds": wall,
            "cpu_seconds": time.process_time() - cpu0,
            "images_per_second": fit.steps * min(train_cfg.batch_size, len(dataset.train)) / wall,
            "runtime": rt.describe(),
        }
        config = {
            "kind": "train", "fingerprint": key, "seed": seed, "created": now_iso(),
            "data": dataset.source, "model": spec,
            "model_config": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg),
            "runtime": rt.describe(), "dataset": dataset.describe(),
            "environment": environment(),
        }
        save_weights(stage / MODEL_FILE, fit.model, {"fingerprint": key})
        atomic_write_json(stage / CONFIG_FILE, config)
        atomic_write_json(stage / HISTORY_FILE, fit.history)
        write_manifest(stage / MANIFEST_FILE, dataset)
        training_curve(fit.history, stage / CURVE_FILE,
                       title=f"{dataset.name} ({dataset.view.kind}), seed {seed}")
        atomic_write_json(stage / METRICS_FILE, metrics)
    return metrics

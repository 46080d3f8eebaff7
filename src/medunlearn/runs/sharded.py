"""Train a sharded model (SISA, :mod:`medunlearn.sharding`) into a run folder:
``medunlearn train --shards S [--slices R]``."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from medunlearn.checkpoint import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    save_shard_files,
    save_weights,
)
from medunlearn.config import DataConfig, ModelConfig, TrainConfig
from medunlearn.data import Dataset
from medunlearn.errors import ConfigError
from medunlearn.executors import BACKENDS
from medunlearn.fileio import atomic_write_json, staged_output
from medunlearn.loop import Runtime
from medunlearn.provenance import environment, now_iso
from medunlearn.runs.train import prepare_training, recipe, split_metrics, write_manifest
from medunlearn.sharding import assign_shards, check_count, shard_recipe, train_sharded
from medunlearn.training import evaluate_split


def run_sharded_training(data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig,
                         *, seed: int, out: str | os.PathLike, shards: int, slices: int = 1,
                         backend: str = "local", ray_address: str | None = None,
                         num_cpus: int | None = None, overwrite: bool = False,
                         dataset: Dataset | None = None) -> dict:
    """Train a sharded model and write a complete run folder at ``out`` (atomically).

    The folder is a run folder like ``train``'s (``model.safetensors`` holds the ensemble,
    ``config.json`` a ``shards`` section with S, R, the seeds, the stage epochs, per-shard
    class counts and the constituents' recipe, :func:`medunlearn.sharding.shard_recipe`), plus
    ``shards.csv`` (the assignment) and
    ``shards/shard-<s>/slice-<r>.safetensors`` (each shard's checkpoint after each slice). A
    finished run of the same configuration is reused.

    Returns:
        The metrics written to ``metrics.json``.
    """
    out = Path(out)
    shards = check_count(shards, "--shards")
    slices = check_count(slices, "--slices")
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    dataset, train_cfg, key, previous = prepare_training(
        data_cfg, model_cfg, train_cfg, seed=seed, out=out, overwrite=overwrite, dataset=dataset,
        extra=lambda cfg: {"shard_recipe": recipe(shard_recipe(cfg, shards)),
                           "shards": shards, "slices": slices})
    if previous is not None:  # a finished run of this configuration
        return previous
    assign_shards(dataset, shards=shards, slices=slices, seed=seed)  # refuse before any work
    rt = Runtime.create(train_cfg.device, train_cfg.precision, train_cfg.threads)
    with staged_output(out, overwrite=overwrite, what="run") as stage:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        fit = train_sharded(dataset, model_cfg, train_cfg, seed=seed, shards=shards,
                            slices=slices, backend=backend, ray_address=ray_address,
                            num_cpus=num_cpus)
        wall = time.perf_counter() - t0
        model = fit.model
        section = save_shard_files(stage, model, num_classes=dataset.num_classes)
        members = [{"shard": s, "images": section["images"][s],
                    "class_counts": section["class_counts"][s],
                    "seconds": fit.shards[s]["seconds"], "steps": fit.shards[s]["steps"],
                    "best_epochs": [st["best_epoch"] for st in fit.shards[s]["stages"]],
                    "val": evaluate_split(m, dataset.val, runtime=rt),
                    "test": evaluate_split(m, dataset.test, runtime=rt)}
                   for s, m in enumerate(model.members)]
        metrics = {
            "splits": split_metrics(model, dataset, runtime=rt),
            "steps": fit.steps,
            "train_seconds": wall,
            "cpu_seconds": time.process_time() - cpu0,
            "images_per_second": sum(
                st["steps"] * min(model.shards.recipe.batch_size, max(st["images"], 1))
                for sh in fit.shards for st in sh["stages"]) / wall,
            "runtime": rt.describe(),
            "shards": {"count": shards, "slices": slices, "backend": backend,
                       "stage_epochs": section["stage_epochs"],
                       "shard_seconds": [m["seconds"] for m in members],
                       "members": members},
        }
        config = {
            "kind": "train", "fingerprint": key, "seed": seed, "created": now_iso(),
            "data": dataset.source, "model": model.shards.spec,
            "model_config": dataclasses.asdict(model_cfg),
            "train": dataclasses.asdict(train_cfg), "runtime": rt.describe(),
            "dataset": dataset.describe(), "environment": environment(), "shards": section,
        }
        save_weights(stage / MODEL_FILE, model, {"fingerprint": key})
        atomic_write_json(stage / CONFIG_FILE, config)
        atomic_write_json(stage / "history.json", [
            {"shard": sh["shard"], "stages": sh["stages"]} for sh in fit.shards])
        write_manifest(stage / "manifest.csv", dataset)
        atomic_write_json(stage / METRICS_FILE, metrics)
    return metrics


__all__ = ["run_sharded_training"]

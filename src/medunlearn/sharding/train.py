"""Train a sharded model: S constituents, each on its own shard, R slices each."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from medunlearn.config import ModelConfig, TrainConfig, as_config
from medunlearn.data import Dataset
from medunlearn.errors import ConfigError
from medunlearn.executors import BACKENDS
from medunlearn.models.ensemble import EnsembleClassifier
from medunlearn.sharding.assignment import assign_shards, shard_recipe, stage_epochs, stage_seed
from medunlearn.sharding.jobs import ShardJob, StageJob, run_jobs
from medunlearn.sharding.state import Checkpoint, ShardState


@dataclass
class ShardedFit:
    """What :func:`train_sharded` returns."""

    model: EnsembleClassifier  # carries ``model.shards`` (the ShardState)
    shards: list[dict]  # per shard: stage records, steps, seconds
    seconds: float
    steps: int


def train_sharded(dataset: Dataset, model_config: ModelConfig | dict | None = None,
                  train_config: TrainConfig | dict | None = None, *, seed: int = 0,
                  shards: int, slices: int = 1, backend: str = "local",
                  ray_address: str | None = None, num_cpus: int | None = None,
                  threads: int | None = None) -> ShardedFit:
    """Train a sharded model (S constituents, each on its own shard, R slices each).

    The Python equivalent of ``medunlearn train --shards S --slices R``::

        fit = train_sharded(data, ModelConfig(), TrainConfig(), seed=0, shards=4, slices=4)
        result = medunlearn.unlearn(fit.model, data, forget={"patients": ["P7"]},
                                    method="sisa")

    Args:
        dataset: The data in memory.
        model_config, train_config: Architecture and recipe (``epochs`` None resolves from the
            whole training split, as for monolithic training). The constituents train with
            :func:`~medunlearn.sharding.shard_recipe` of it (for S > 1 a batch of about B / S
            and the last epoch's weights), recorded as the model's ``shards.recipe``.
        seed: Seeds the assignment and every stage (:func:`stage_seed`).
        shards, slices: S and R.
        backend: ``local`` (shards one after another in this process) or ``ray`` (one Ray task
            per shard; the same weights).
        ray_address, num_cpus: A Ray cluster address, or the CPUs of a local Ray.
        threads: torch threads per shard job (None: the recipe's ``threads``; 1 on Ray).

    Raises:
        ConfigError: bad S, R, recipe or backend; a split that cannot be sharded that way.
    """
    from medunlearn.training import build_for, resolve_epochs, validate_train_config

    model_config = as_config(ModelConfig, model_config, where="model_config")
    train_config = as_config(TrainConfig, train_config, where="train_config")
    validate_train_config(train_config)
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    train_config = dataclasses.replace(
        train_config, epochs=resolve_epochs(train_config.epochs, len(dataset.train)))
    assignment = assign_shards(dataset, shards=shards, slices=slices, seed=seed)
    _, spec = build_for(dataset, model_config)
    epochs = stage_epochs(train_config.epochs, assignment.slices)
    seeds = [[stage_seed(seed, s, r) for r in range(assignment.slices)]
             for s in range(assignment.shards)]
    if backend == "ray":
        train_config = dataclasses.replace(train_config, progress=False)
        threads = threads or 1
    train_config = shard_recipe(train_config, assignment.shards)
    jobs = [ShardJob(s, spec, train_config,
                     tuple(StageJob(r, seeds[s][r], epochs[r], assignment.indices(s, r))
                           for r in range(assignment.slices)))
            for s in range(assignment.shards)]
    t0 = time.perf_counter()
    results = run_jobs(jobs, dataset, backend=backend, ray_address=ray_address,
                        num_cpus=num_cpus, threads=threads or train_config.threads)
    state = ShardState(assignment, spec, tuple(epochs), seeds, frozenset(),
                       [[Checkpoint.of(b) for b in r["checkpoints"]] for r in results],
                       recipe=train_config)
    return ShardedFit(state.build_model(),
                      [{k: v for k, v in r.items() if k != "checkpoints"} for r in results],
                      time.perf_counter() - t0, sum(r["steps"] for r in results))


__all__ = ["ShardedFit", "train_sharded"]

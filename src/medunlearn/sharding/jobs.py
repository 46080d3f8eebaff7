"""One shard's training through its slice stages (:class:`ShardJob`, an independent job), and
running such jobs one after another or as Ray tasks (:mod:`medunlearn.executors`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from medunlearn.config import TrainConfig
from medunlearn.data import Dataset
from medunlearn.executors import make_executor
from medunlearn.loop import Runtime, set_threads
from medunlearn.sharding.state import checkpoint_bytes


@dataclass(frozen=True)
class StageJob:
    """One slice stage: train ``epochs`` epochs on ``indices`` with ``seed``."""

    stage: int
    seed: int
    epochs: int
    indices: np.ndarray


@dataclass(frozen=True)
class ShardJob:
    """Train one shard through consecutive slice stages (an independent job).

    ``start`` is the checkpoint the first stage starts from (None: a fresh model, initialised
    from the first stage's seed)."""

    shard: int
    spec: dict
    train: TrainConfig
    stages: tuple[StageJob, ...]
    start: bytes | None = None


def run_shard_job(job: ShardJob, dataset: Dataset, *, threads: int | None = None,
                  runtime: Runtime | None = None,
                  on_batch: Callable[[torch.Tensor], None] | None = None) -> dict:
    """Run one :class:`ShardJob` (module level: a Ray task as well as a local call).

    A stage with no image to train on (everything in its slices was forgotten) keeps its start
    weights. Returns ``{"shard", "checkpoints": [bytes per stage], "stages": [record per
    stage], "steps", "seconds"}``.
    """
    from medunlearn.training import fit, model_from_spec, seed_everything

    t0 = time.perf_counter()
    set_threads(threads)
    rt = runtime or Runtime.create(job.train.device, job.train.precision,
                                   threads or job.train.threads)
    first = job.stages[0]
    if job.start is None:
        seed_everything(first.seed)  # weight initialisation, as train_model does
        model = model_from_spec(job.spec)
    else:
        model = model_from_spec(job.spec)
        model.load_state_dict(load_safetensors(job.start), strict=True)
    checkpoints, records, steps = [], [], 0
    for st in job.stages:
        if st is not first or job.start is not None:
            seed_everything(st.seed)
        t = time.perf_counter()
        rec = {"slice": st.stage + 1, "seed": st.seed, "epochs": st.epochs,
               "images": len(st.indices)}
        if len(st.indices):
            cfg = dataclasses.replace(job.train, epochs=st.epochs)
            # select="last" (the shard recipe for S > 1) needs no per-epoch validation
            res = fit(model, dataset, torch.from_numpy(st.indices), cfg, seed=st.seed,
                      desc=f"shard {job.shard} slice {st.stage + 1}", on_batch=on_batch,
                      runtime=rt, validate=cfg.select != "last")
            steps += res.steps
            rec |= {"steps": res.steps, "best_epoch": res.best_epoch, "history": res.history}
        else:
            rec |= {"steps": 0, "best_epoch": None, "history": [],
                    "note": "no image left to train on: start weights kept"}
        model.eval()
        rec["seconds"] = time.perf_counter() - t
        checkpoints.append(checkpoint_bytes(model, shard=job.shard, stage=st.stage,
                                            seed=st.seed))
        records.append(rec)
    return {"shard": job.shard, "checkpoints": checkpoints, "stages": records, "steps": steps,
            "seconds": time.perf_counter() - t0}


def run_jobs(jobs: Sequence[ShardJob], dataset: Dataset, *, backend: str,
             ray_address: str | None, num_cpus: int | None, threads: int | None) -> list[dict]:
    """Run shard jobs through :func:`medunlearn.executors.make_executor` (local or Ray; a task
    that dies raises here), and return their results in job order.

    Raises:
        ConfigError: an unknown backend.
    """
    executor = make_executor(backend, run_shard_job, ray_address=ray_address,
                             num_cpus=num_cpus, cpus_per_task=threads or 1, threads=threads)
    try:
        results = {r["shard"]: r for r in executor.map([(job, dataset) for job in jobs])}
    finally:
        executor.close()
    return [results[j.shard] for j in jobs]


__all__ = ["ShardJob", "StageJob", "run_jobs", "run_shard_job"]

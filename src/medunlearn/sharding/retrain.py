"""Exact forgetting on a sharded model: retrain the shards that saw the forgotten images (``sisa``:
only those, from their last clean checkpoint; ``retrain``: every shard from scratch)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from medunlearn.config import TrainConfig
from medunlearn.data import Dataset
from medunlearn.errors import ConfigError, ForgetSetError
from medunlearn.loop import Runtime
from medunlearn.models.ensemble import EnsembleClassifier
from medunlearn.sharding.assignment import stage_seed
from medunlearn.sharding.jobs import ShardJob, StageJob, run_shard_job
from medunlearn.sharding.state import Checkpoint, ShardState, shard_state_of


def retrain_shards(model: EnsembleClassifier, *, dataset: Dataset, retain: torch.Tensor,
                   train_config: TrainConfig, seed: int, only_affected: bool,
                   runtime: Runtime | None = None, progress: bool = False,
                   on_batch: Callable[[torch.Tensor], None] | None = None
                   ) -> tuple[EnsembleClassifier, dict]:
    """Exactly forget every training image outside ``retain`` from a sharded model.

    Every stage trains on its shard's slices within ``retain``, minus the images no checkpoint
    has seen (a forgotten image never comes back). ``only_affected`` (``sisa``): retrain only the
    shards holding an image the checkpoints saw and ``retain`` no longer holds, each from the
    last checkpoint before the first slice holding one, once per shard however many of its
    patients are named; the other shards are kept as they are, byte for byte. Otherwise
    (``retrain``): every shard from scratch. Stages are seeded by :func:`stage_seed` of
    ``seed``; with the seed that trained the model the two give the same weights, which are
    those ``train_sharded`` gives on the data without the forgotten images.

    Returns:
        The new ensemble (with its updated :class:`ShardState`) and the details to record.

    Raises:
        ConfigError: ``only_affected`` on a model whose checkpoints are missing or no longer
            describe its weights.
        CheckpointError: the data are not those the assignment was made for.
        ForgetSetError: forgetting would leave a shard with no image at all.
    """
    method = "sisa" if only_affected else "retrain"
    state = shard_state_of(model, method)
    a = state.assignment
    a.check_data(dataset)
    allowed = state.allowed(retain)
    seen = state.allowed(None)
    removed = seen & ~allowed  # images some checkpoint saw that must now be forgotten
    if only_affected:
        if state.checkpoints is None or not state.describes(model):
            raise ConfigError(
                "This sharded model's weights are not those of its slice checkpoints (an "
                "approximate unlearning method changed them and the checkpoints were dropped, "
                "or its run folder mixes files of different runs), "
                "so 'sisa' cannot retrain it from a clean checkpoint. Use 'retrain' (every shard "
                "from scratch with the recorded assignment), which restores the checkpoints.")
        plan = {}
        for s in range(a.shards):
            hit = removed & (a.shard == s)
            if hit.any():
                plan[s] = int(a.slice[hit].min())
    else:
        plan = dict.fromkeys(range(a.shards), 0)
    for s in plan:
        if not len(a.indices(s, a.slices - 1, allowed)):
            raise ForgetSetError(
                f"Forgetting these images would leave shard {s} of the sharded model with no "
                "training image at all. Retrain the model with fewer shards (medunlearn train "
                "--shards), then forget.")
    seeds = [list(row) for row in state.seeds]
    checkpoints = [list(row) for row in state.checkpoints] if state.checkpoints else \
        [[None] * a.slices for _ in range(a.shards)]
    # the recipe the shards were trained with (device, threads and progress are the caller's)
    cfg = dataclasses.replace(state.recipe or train_config, device=train_config.device,
                              threads=train_config.threads, progress=progress)
    records, steps = {}, 0
    for s, j in sorted(plan.items()):
        for r in range(j, a.slices):
            seeds[s][r] = stage_seed(seed, s, r)
        job = ShardJob(s, state.spec, cfg,
                       tuple(StageJob(r, seeds[s][r], state.epochs[r], a.indices(s, r, allowed))
                             for r in range(j, a.slices)),
                       start=checkpoints[s][j - 1].read() if j > 0 else None)
        res = run_shard_job(job, dataset, runtime=runtime, on_batch=on_batch)
        for r, data in zip(range(j, a.slices), res["checkpoints"], strict=True):
            checkpoints[s][r] = Checkpoint.of(data)
        records[s] = res
        steps += res["steps"]
    new_state = ShardState(a, state.spec, state.epochs, seeds,
                           frozenset(state.excluded | set(np.flatnonzero(~allowed).tolist())),
                           checkpoints, state.recipe)
    from medunlearn.training import model_from_spec

    members = []
    for s in range(a.shards):
        if s in plan:
            m = model_from_spec(state.spec)
            m.load_state_dict(checkpoints[s][-1].state(), strict=True)
        else:
            m = copy.deepcopy(model.members[s])
        members.append(m.eval())
    out = EnsembleClassifier(members).eval()
    out.shards = new_state
    details = {
        "exact": True, "shards": a.shards, "slices": a.slices,
        "retrained_shards": sorted(plan),
        "from_slice": {str(s): j + 1 for s, j in sorted(plan.items())},
        "retrained_stages": sum(a.slices - j for j in plan.values()),
        "total_stages": a.shards * a.slices, "steps": steps,
        "shard_seconds": {str(s): r["seconds"] for s, r in records.items()},
        "forgotten_seen": int(removed.sum()),
    }
    return out, details


__all__ = ["retrain_shards"]

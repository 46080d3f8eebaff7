"""Sharded, isolated, sliced training (SISA) and exact forgetting by retraining one shard.

SISA (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021) trains S constituent models, each
on its own disjoint shard of the training split; deleting an image retrains only the shard that
saw it. With R slices per shard each constituent trains incrementally (slice 1, then slices
1..2, ...) and keeps a checkpoint after each slice, so a deletion restarts from the last
checkpoint that never saw the image. The deployed model is one ``nn.Module``, the mean of the
constituents' probabilities (:class:`medunlearn.models.ensemble.EnsembleClassifier`).

In memory, one module per job:

* ``assignment``: :func:`assign_shards` the shard and slice of every training image
  (:class:`Assignment`), and the seeds and epochs of the slice stages;
* ``state``: :class:`ShardState`, what a sharded model carries besides its weights (the
  assignment and every shard's :class:`Checkpoint` after each slice), and :func:`settle`;
* ``jobs``: one shard's training (:class:`ShardJob`), run one after another or in parallel on
  Ray workers through :mod:`medunlearn.executors`;
* ``train``: :func:`train_sharded` S constituents through the one training loop
  (:func:`medunlearn.training.fit`), one independent job per shard;
* ``retrain``: :func:`retrain_shards` the exact unlearning of the ``sisa`` method (only the
  affected shards, from their last clean checkpoint) and of ``retrain`` on a sharded model
  (every shard from scratch), which give byte-identical models for the same seed.

Run folders: :func:`medunlearn.runs.run_sharded_training` (``medunlearn train --shards S``);
:mod:`medunlearn.checkpoint` owns the shard files of a run folder (``shards.csv``, the slice
checkpoints) and reads and writes them (``save_shard_files``, ``attach_shard_state``).

Determinism. Every slice stage is a pure function of (start weights, its data, its seed): the
global generators are re-seeded from the stage's seed before it, its data order and augmentation
come from a generator seeded by it (inside ``fit``), and it starts a fresh optimiser and
learning-rate schedule. The stage seed is :func:`stage_seed` of (seed, shard, stage), never drawn
from a running generator. Shard 0's first stage keeps the run seed itself, so ``S = 1, R = 1``
is exactly today's monolithic training, bit for bit.

Recipe. For S > 1 every constituent trains with :func:`shard_recipe` of the recipe: a batch of
``max(16, round(B / S))``, so it takes as many optimiser steps per epoch as the monolithic model,
and the last epoch's weights, with no per-epoch validation. The run folder records it
(``config.json`` ``shards.recipe``) and exact forgetting repeats it.

Cost. Every constituent trains the recipe's epoch count ``E`` (resolved from the whole training
split, as monolithic training resolves it) on its shard, so the S shards together see as many
samples as one monolithic training. With R slices, each slice stage trains
``max(1, round(2E / (R + 1)))`` epochs on the cumulative slices 1..r (SISA's rule): the stages
then see ``E'(R + 1) / 2 ~= E`` shard-passes in all, again about one training of the shard.
Retraining one shard from scratch therefore costs about ``1/S`` of a full training, and from the
checkpoint before slice ``j`` about ``(R(R + 1) - (j - 1)j) / (R(R + 1)) / S`` of it.
"""

from medunlearn.sharding.assignment import (
    MIN_SHARD_BATCH,
    Assignment,
    assign_shards,
    bucket,
    check_count,
    group_keys,
    shard_recipe,
    stage_epochs,
    stage_seed,
)
from medunlearn.sharding.jobs import ShardJob, StageJob, run_shard_job
from medunlearn.sharding.retrain import retrain_shards
from medunlearn.sharding.state import Checkpoint, ShardState, settle, shard_state_of
from medunlearn.sharding.train import ShardedFit, train_sharded

__all__ = [
    "MIN_SHARD_BATCH", "Assignment", "Checkpoint", "ShardJob", "ShardState", "ShardedFit",
    "StageJob", "assign_shards", "bucket", "check_count", "group_keys", "retrain_shards",
    "run_shard_job", "settle", "shard_recipe", "shard_state_of", "stage_epochs", "stage_seed",
    "train_sharded",
]

"""Sharded, isolated, sliced training (SISA) and exact forgetting by retraining one shard.

SISA (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021) trains S constituent models, each
on its own disjoint shard of the training split; deleting an image retrains only the shard that
saw it. With R slices per shard each constituent trains incrementally (slice 1, then slices
1..2, ...) and keeps a checkpoint after each slice, so a deletion restarts from the last
checkpoint that never saw the image. The deployed model is one ``nn.Module``, the mean of the
constituents' probabilities (:class:`medunlearn.models.ensemble.EnsembleClassifier`).

In-memory core:

* :func:`assign_shards` the shard and slice of every training image (:class:`Assignment`);
* :func:`train_sharded` S constituents through the one training loop
  (:func:`medunlearn.training.fit`), one independent job per shard, run one after another or in
  parallel on Ray workers through the experiment grids' executor;
* :func:`retrain_shards` the exact unlearning of the ``sisa`` method (only the affected shards,
  from their last clean checkpoint) and of ``retrain`` on a sharded model (every shard from
  scratch), which give byte-identical models for the same seed.

Run-folder layer (bottom of this module): :func:`run_sharded_training` (``medunlearn train
--shards S``), :func:`save_shard_files` / :func:`attach_shard_state` (called by the writers and
``checkpoint.load_run``).

Determinism. Every slice stage is a pure function of (start weights, its data, its seed): the
global generators are re-seeded from the stage's seed before it, its data order and augmentation
come from a generator seeded by it (inside ``fit``), and it starts a fresh optimiser and
learning-rate schedule. The stage seed is :func:`stage_seed` of (seed, shard, stage), never drawn
from a running generator. Shard 0's first stage keeps the run seed itself, so ``S = 1, R = 1``
is exactly today's monolithic training, bit for bit.

Cost. Every constituent trains the recipe's epoch count ``E`` (resolved from the whole training
split, as monolithic training resolves it) on its shard, so the S shards together see as many
samples as one monolithic training. With R slices, each slice stage trains
``max(1, round(2E / (R + 1)))`` epochs on the cumulative slices 1..r (SISA's rule): the stages
then see ``E'(R + 1) / 2 ~= E`` shard-passes in all, again about one training of the shard.
Retraining one shard from scratch therefore costs about ``1/S`` of a full training, and from the
checkpoint before slice ``j`` about ``(R(R + 1) - (j - 1)j) / (R(R + 1)) / S`` of it (plus each
stage's per-epoch validation, which does not shrink with the shard).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from medunlearn.config import DataConfig, ModelConfig, TrainConfig, as_config
from medunlearn.data import Dataset
from medunlearn.errors import CheckpointError, ConfigError, ForgetSetError
from medunlearn.loop import Runtime, set_threads
from medunlearn.models.ensemble import EnsembleClassifier, is_ensemble

ASSIGNMENT_FILE = "shards.csv"
SHARDS_DIR = "shards"
ASSIGNMENT_COLUMNS = ("index", "sha256", "label", "patient_id", "group", "shard", "slice")
BACKENDS = ("local", "ray")


def checkpoint_name(shard: int, stage: int) -> str:
    """Path of shard ``shard``'s checkpoint after slice ``stage + 1``, inside a run folder."""
    return f"{SHARDS_DIR}/shard-{shard}/slice-{stage + 1}.safetensors"


def check_count(value, option: str) -> int:
    """``value`` as a whole number >= 1 (``--shards``, ``--slices``).

    Raises:
        ConfigError: not a whole number (floats, text and booleans included) or below 1.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{option} must be a whole number of at least 1, got {value!r}.")
    if int(value) < 1:
        raise ConfigError(f"{option} must be at least 1, got {value}. Use {option} 1 for "
                          "monolithic behaviour.")
    return int(value)


# -- assignment -----------------------------------------------------------------------------------
def _u64(seed: int, domain: str, key: str) -> int:
    digest = hashlib.sha256(f"medunlearn-shards|{seed}|{domain}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def bucket(seed: int, domain: str, key: str, n: int) -> int:
    """A bucket in ``0..n-1`` for ``key``: ``floor(u * n)`` of a uniform 64-bit hash ``u`` of
    (seed, domain, key). Multiply-shift nests: bucket ``b`` of ``2n`` lies in bucket ``b // 2``
    of ``n`` (the 8 shards of a seed split its 4 shards in two)."""
    return (_u64(seed, domain, key) * n) >> 64


def group_keys(split) -> np.ndarray:
    """The group of each image: what must never be split across shards.

    An image's own key is ``patient:<id>`` where the data have patient ids (an empty id counts
    as none) and ``sha256:<hash>`` otherwise. Keys that share an image hash are joined
    (union-find), so every byte-identical copy goes with the patient; a joined group is named
    by its smallest key. Without patient ids, identical images share their key already.
    """
    hashes = split.hashes
    pids = split.patient_ids
    own = [f"patient:{p}" if pids is not None and str(p) != "" else f"sha256:{h}"
           for p, h in zip(pids if pids is not None else [None] * len(hashes), hashes,
                           strict=True)]
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return root

    first_by_hash: dict[str, str] = {}
    for k, h in zip(own, hashes, strict=True):
        parent.setdefault(k, k)
        other = first_by_hash.setdefault(h, k)
        ra, rb = find(k), find(other)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            parent[hi] = lo
    return np.asarray([find(k) for k in own], dtype=object)


@dataclass(frozen=True)
class Assignment:
    """The shard and slice of every training image (see :func:`assign_shards`).

    Attributes:
        shards, slices, seed: S, R and the seed the assignment was hashed with.
        shard: (N,) shard of each training index, ``0..S-1``.
        slice: (N,) slice of each training index, ``0..R-1`` (slice ``r + 1`` in files).
        groups: (N,) group key of each image (patient or image hash).
        hashes, labels, patients: identity of each training image (checked against the data).
    """

    shards: int
    slices: int
    seed: int
    shard: np.ndarray
    slice: np.ndarray
    groups: np.ndarray
    hashes: tuple[str, ...]
    labels: np.ndarray
    patients: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.shard)

    def indices(self, shard: int, stage: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """Sorted training indices of ``shard``'s slices ``0..stage`` (within ``allowed``)."""
        mask = (self.shard == shard) & (self.slice <= stage)
        if allowed is not None:
            mask &= allowed
        return np.flatnonzero(mask).astype(np.int64)

    def class_counts(self, num_classes: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """(S, K) images of each class in each shard (within ``allowed``)."""
        out = np.zeros((self.shards, num_classes), dtype=np.int64)
        keep = np.ones(len(self), bool) if allowed is None else allowed
        np.add.at(out, (self.shard[keep], self.labels[keep]), 1)
        return out

    def check_data(self, dataset: Dataset, where: str = "the sharded model") -> None:
        """Refuse data whose training images are not the ones the assignment was made for.

        Raises:
            CheckpointError: another count or order of training images.
        """
        hashes = dataset.train.hashes
        if len(hashes) != len(self) or tuple(hashes) != self.hashes:
            raise CheckpointError(
                f"The shard assignment of {where} lists {len(self)} training images that are "
                f"not the {len(hashes)} training images of {dataset.name} as loaded (another "
                "dataset, size, train_limit or data version). Load the data the model was "
                "trained on.")


def assign_shards(dataset: Dataset, *, shards: int, slices: int = 1, seed: int = 0
                  ) -> Assignment:
    """Assign every training image to one of ``shards`` disjoint shards and one of ``slices``
    slices inside it.

    Groups (:func:`group_keys`): a patient is never split, and every byte-identical copy of an
    image goes with it. A group's shard is ``bucket(seed, "shard", key, S)`` and its slice
    ``bucket(seed, "slice", key, R)``: a pure function of the group's key and the seed. So
    removing patients never moves anyone else to another shard or slice, and training from
    scratch on the data without them assigns everyone else exactly as before (for a group
    joined through a shared image, as long as its smallest key stays).

    Stratification, and its trade-off. A rank-based split (sort each label's groups by hash,
    deal them round-robin) would balance every class across shards to within one group, but
    removing one group would shift the rank of every later group and move them between
    shards. Stability under *any* removal forces the shard to depend on the group alone (remove
    every other group and what remains is a function of that group), so no stable rule can
    guarantee balance: each class's groups fall into the S shards like independent uniform
    draws, balanced in expectation with a spread of about ``sqrt(n_k / S)`` groups. Stability
    is what makes a one-shard retraining equal to training without the deleted patients, so it
    wins; the per-shard class counts are recorded with every run, and a shard that received no
    image of some class is refused (fewer shards or another seed fixes it).

    Raises:
        ConfigError: ``shards``/``slices`` not whole numbers >= 1, more shards than groups
            (patients, or distinct images without patient ids) or than the images of a class,
            or a shard left without an image of some class.
    """
    shards = check_count(shards, "--shards")
    slices = check_count(slices, "--slices")
    train = dataset.train
    labels = train.labels.numpy().astype(np.int64)
    n = len(labels)
    keys = group_keys(train)
    uniq = sorted(set(keys.tolist()))
    if shards > len(uniq):
        what = ("patients (those sharing an identical image count as one)"
                if train.patient_ids is not None else "distinct images")
        raise ConfigError(f"--shards {shards} is more than the {len(uniq)} {what} of the "
                          f"training split of {dataset.name}; every shard needs at least one. "
                          "Use fewer shards.")
    present = np.flatnonzero(np.bincount(labels, minlength=dataset.num_classes))
    counts = np.bincount(labels, minlength=dataset.num_classes)
    names = dataset.view.class_names
    short = [k for k in present if counts[k] < shards]
    if short:
        k = short[0]
        raise ConfigError(f"--shards {shards} is more than the {counts[k]} training images of "
                          f"class {k} ({names[k]}) in {dataset.name}; every shard needs an "
                          "image of every class. Use at most "
                          f"{int(counts[present].min())} shards (fewer for a balanced split).")
    shard_of = {k: bucket(seed, "shard", k, shards) for k in uniq}
    slice_of = {k: bucket(seed, "slice", k, slices) for k in uniq}
    shard = np.fromiter((shard_of[k] for k in keys), dtype=np.int64, count=n)
    slc = np.fromiter((slice_of[k] for k in keys), dtype=np.int64, count=n)
    pids = train.patient_ids
    out = Assignment(shards, slices, int(seed), shard, slc, keys, tuple(train.hashes), labels,
                     tuple("" if pids is None else str(p) for p in
                           (pids if pids is not None else [None] * n)))
    cc = out.class_counts(dataset.num_classes)
    for s in range(shards):
        missing = [int(k) for k in present if cc[s, k] == 0]
        if missing:
            k = missing[0]
            raise ConfigError(
                f"With --shards {shards} and seed {seed}, shard {s} receives no training image "
                f"of class {k} ({names[k]}) (per-shard counts of that class: "
                f"{cc[:, k].tolist()}). Use fewer shards, or another seed.")
    return out


def stage_epochs(epochs: int, slices: int) -> list[int]:
    """Epochs of each slice stage: all ``epochs`` without slicing; with R slices SISA's
    ``max(1, round(2 * epochs / (R + 1)))`` per stage, so the stages (on 1/R, 2/R, ... of the
    shard) see about ``epochs`` shard-passes in all."""
    if slices == 1:
        return [int(epochs)]
    return [max(1, round(2 * epochs / (slices + 1)))] * slices


def stage_seed(seed: int, shard: int, stage: int) -> int:
    """The seed of one slice stage of one shard: the run seed itself for shard 0's first stage
    (so ``S = R = 1`` is monolithic training), otherwise 63 bits of SHA-256 of (seed, shard,
    stage) (independent of every other stage and run, never drawn from a running generator)."""
    if shard == 0 and stage == 0:
        return int(seed)
    return _u64(int(seed), "stage", f"{shard}/{stage}") >> 1


# -- checkpoints and the shard state --------------------------------------------------------------
def checkpoint_bytes(model: nn.Module, *, shard: int, stage: int, seed: int) -> bytes:
    """The safetensors bytes of a constituent after a slice stage (canonical header, so the same
    weights always give the same bytes)."""
    from medunlearn.checkpoint import canonical_safetensors

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "medunlearn", "kind": "shard-checkpoint", "shard": str(shard),
            "slice": str(stage + 1), "seed": str(seed)}
    return canonical_safetensors(save_safetensors(state, metadata=meta))


@dataclass(frozen=True)
class Checkpoint:
    """One slice checkpoint: its bytes in memory, or a file read (and checked) on demand."""

    sha256: str
    data: bytes | None = field(default=None, repr=False)
    path: Path | None = None

    @classmethod
    def of(cls, data: bytes) -> Checkpoint:
        return cls(hashlib.sha256(data).hexdigest(), data)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        try:
            data = Path(self.path).read_bytes()
        except OSError as exc:
            raise CheckpointError(f"Cannot read the shard checkpoint {self.path} "
                                  f"({exc.strerror or exc}). Restore the run folder.") from None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise CheckpointError(
                f"The shard checkpoint {self.path} is not the file its run recorded (SHA-256 "
                "differs): it was changed or belongs to another run. Restore the folder or "
                "train the sharded model again.")
        return data

    def state(self) -> dict[str, torch.Tensor]:
        try:
            return load_safetensors(self.read())
        except (SafetensorError, ValueError) as exc:
            raise CheckpointError(f"The shard checkpoint {self.path or '(in memory)'} is not "
                                  f"readable safetensors ({exc}).") from None


@dataclass
class ShardState:
    """What a sharded model needs besides its weights to forget exactly.

    Attributes:
        assignment: Shard and slice of every training image.
        spec: The constituents' model spec (as a run's ``config.json`` ``model``).
        epochs: Epochs of each slice stage (:func:`stage_epochs`).
        seeds: (S, R) seed of each slice stage (:func:`stage_seed` of the seed that trained it).
        excluded: Training indices that no checkpoint has seen (forgotten images); they are
            never trained on again.
        checkpoints: (S, R) checkpoints after each slice, or None when they no longer describe
            the weights (an approximate method changed them): then only ``retrain`` applies.
        recipe: The training recipe the shards were trained with (exact forgetting repeats
            it; None: the caller's).
    """

    assignment: Assignment
    spec: dict
    epochs: tuple[int, ...]
    seeds: list[list[int]]
    excluded: frozenset[int] = frozenset()
    checkpoints: list[list[Checkpoint]] | None = None
    recipe: TrainConfig | None = None

    @property
    def shards(self) -> int:
        return self.assignment.shards

    @property
    def slices(self) -> int:
        return self.assignment.slices

    def build_model(self) -> EnsembleClassifier:
        """The ensemble of the last checkpoint of every shard."""
        from medunlearn.training import model_from_spec

        members = []
        for s in range(self.shards):
            m = model_from_spec(self.spec)
            m.load_state_dict(self.checkpoints[s][-1].state(), strict=True)
            members.append(m.eval())
        model = EnsembleClassifier(members).eval()
        model.shards = self
        return model

    def describes(self, model: EnsembleClassifier) -> bool:
        """Whether every constituent's weights equal its shard's last checkpoint."""
        if self.checkpoints is None or len(model) != self.shards:
            return False
        for s, member in enumerate(model.members):
            ck = self.checkpoints[s][-1].state()
            own = member.state_dict()
            if set(own) != set(ck) or not all(torch.equal(own[k].cpu(), ck[k]) for k in ck):
                return False
        return True

    def allowed(self, retain: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """(N,) mask of the images a stage may train on: ``retain`` (all when None) minus the
        images no checkpoint has seen."""
        n = len(self.assignment)
        mask = np.ones(n, bool)
        if retain is not None:
            mask[:] = False
            mask[np.asarray(retain, dtype=np.int64)] = True
        if self.excluded:
            mask[np.fromiter(self.excluded, dtype=np.int64)] = False
        return mask


# -- one shard's training job ---------------------------------------------------------------------
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
            res = fit(model, dataset, torch.from_numpy(st.indices), cfg, seed=st.seed,
                      desc=f"shard {job.shard} slice {st.stage + 1}", on_batch=on_batch,
                      runtime=rt)
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


def _run_jobs(jobs: Sequence[ShardJob], dataset: Dataset, *, backend: str,
              ray_address: str | None, num_cpus: int | None, threads: int | None) -> list[dict]:
    """Run shard jobs through the experiment grids' executor (local or Ray), in shard order."""
    from medunlearn.experiments.runner import make_executor

    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    executor = make_executor(backend, ray_address=ray_address, num_cpus=num_cpus,
                             cpus_per_task=threads or 1, threads=threads, task=run_shard_job)
    try:
        results = {r["shard"]: r for r in executor.map([(job, dataset) for job in jobs])}
    finally:
        executor.close()
    return [results[j.shard] for j in jobs]


# -- training -------------------------------------------------------------------------------------
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
            whole training split, as for monolithic training).
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
    jobs = [ShardJob(s, spec, train_config,
                     tuple(StageJob(r, seeds[s][r], epochs[r], assignment.indices(s, r))
                           for r in range(assignment.slices)))
            for s in range(assignment.shards)]
    t0 = time.perf_counter()
    results = _run_jobs(jobs, dataset, backend=backend, ray_address=ray_address,
                        num_cpus=num_cpus, threads=threads or train_config.threads)
    state = ShardState(assignment, spec, tuple(epochs), seeds, frozenset(),
                       [[Checkpoint.of(b) for b in r["checkpoints"]] for r in results],
                       recipe=train_config)
    return ShardedFit(state.build_model(),
                      [{k: v for k, v in r.items() if k != "checkpoints"} for r in results],
                      time.perf_counter() - t0, sum(r["steps"] for r in results))


# -- exact unlearning -----------------------------------------------------------------------------
def shard_state_of(model: nn.Module, method: str) -> ShardState:
    """The :class:`ShardState` a sharded model carries.

    Raises:
        ConfigError: the model is not a sharded model from sharded training (or its folder).
    """
    state = getattr(model, "shards", None) if is_ensemble(model) else None
    if state is None:
        what = ("an ensemble without its shard assignment" if is_ensemble(model)
                else "a monolithic model")
        fix = ("" if method == "retrain" else
               ", or use 'retrain' or an approximate method")
        raise ConfigError(
            f"Method {method!r} on an ensemble needs a sharded model (trained with 'medunlearn "
            "train --shards S' or medunlearn.sharding.train_sharded, or loaded from such a run "
            f"folder); this is {what}. Train a sharded model{fix}.")
    return state


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


def settle(model: nn.Module) -> None:
    """Drop the slice checkpoints a sharded model carries once they no longer describe its
    weights (after an approximate method): they hold what the method was asked to forget. The
    assignment stays, so ``retrain`` still works; ``sisa`` then refuses."""
    state = getattr(model, "shards", None) if is_ensemble(model) else None
    if state is not None and state.checkpoints is not None and not state.describes(model):
        model.shards = dataclasses.replace(state, checkpoints=None)


# -- run folders ----------------------------------------------------------------------------------
def write_assignment_csv(path: str | os.PathLike, state: ShardState) -> bytes:
    """``index,sha256,label,patient_id,group,shard,slice`` of every training image (slices
    numbered from 1), atomically; returns the bytes written."""
    from medunlearn.fileio import atomic_write_bytes

    a = state.assignment
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ASSIGNMENT_COLUMNS)
    for i in range(len(a)):
        w.writerow([i, a.hashes[i], int(a.labels[i]), a.patients[i], a.groups[i],
                    int(a.shard[i]), int(a.slice[i]) + 1])
    data = buf.getvalue().encode("utf-8")
    atomic_write_bytes(path, data)
    return data


def read_assignment_csv(path: Path, *, shards: int, slices: int, seed: int) -> Assignment:
    """Read a run's ``shards.csv``.

    Raises:
        CheckpointError: unreadable, wrong columns, or values out of range.
    """
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or tuple(rows[0].keys()) != ASSIGNMENT_COLUMNS:
            raise ValueError(f"columns must be {','.join(ASSIGNMENT_COLUMNS)}")
        if [int(r["index"]) for r in rows] != list(range(len(rows))):
            raise ValueError("indices must run 0, 1, 2, ... in order")
        shard = np.array([int(r["shard"]) for r in rows], dtype=np.int64)
        slc = np.array([int(r["slice"]) - 1 for r in rows], dtype=np.int64)
        if shard.min() < 0 or shard.max() >= shards or slc.min() < 0 or slc.max() >= slices:
            raise ValueError(f"shards must lie in 0..{shards - 1} and slices in 1..{slices}")
        return Assignment(shards, slices, seed, shard, slc,
                          np.array([r["group"] for r in rows], dtype=object),
                          tuple(r["sha256"] for r in rows),
                          np.array([int(r["label"]) for r in rows], dtype=np.int64),
                          tuple(r["patient_id"] for r in rows))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a valid shard assignment ({str(exc)[:160]}). "
                              "Restore it from the run, or train the sharded model again.") \
            from None


def model_for_config(config: dict) -> nn.Module:
    """An untrained model of a run's architecture: a Classifier, or for a sharded run
    (``config["shards"]``) an ensemble of ``count`` of them."""
    from medunlearn.training import model_from_spec

    section = config["shards"] if "shards" in config else None
    if section is None:
        return model_from_spec(config["model"])
    count = check_count(section["count"], "shards.count")
    return EnsembleClassifier([model_from_spec(config["model"]) for _ in range(count)])


def attach_shard_state(model: nn.Module, path: Path, config: dict) -> None:
    """Attach the :class:`ShardState` of a sharded run folder to its loaded model (nothing for a
    monolithic run). Checkpoint files are checked to exist now and read when needed.

    Raises:
        CheckpointError: the assignment file, a shard's folder or a checkpoint is missing (the
            message names the file), or the assignment is unreadable.
    """
    section = config.get("shards")
    if section is None:
        return
    path = Path(path)

    def missing(name: str, what: str) -> CheckpointError:
        return CheckpointError(
            f"The sharded run folder {path} has no {name} ({what}), so it is incomplete: "
            "restore the folder from a complete copy, or train the sharded model again.")

    try:
        shards, slices = int(section["count"]), int(section["slices"])
        seed = int(section["seed"])
        recorded = section.get("checkpoints")
        state_fields = (tuple(int(e) for e in section["stage_epochs"]),
                        [[int(x) for x in row] for row in section["stage_seeds"]],
                        frozenset(int(i) for i in section.get("excluded", [])))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / 'config.json'} has an invalid 'shards' section "
                              f"({str(exc)[:120]}). Restore it or train again.") from None
    if not (path / ASSIGNMENT_FILE).is_file():
        raise missing(ASSIGNMENT_FILE, "the shard and slice of every training image")
    checkpoints = None
    if recorded is not None:
        checkpoints = []
        for s in range(shards):
            folder = f"{SHARDS_DIR}/shard-{s}"
            if not (path / folder).is_dir():
                raise missing(folder + "/", f"shard {s}'s slice checkpoints")
            row = []
            for r in range(slices):
                name = checkpoint_name(s, r)
                if not (path / name).is_file():
                    raise missing(name, f"shard {s}'s checkpoint after slice {r + 1}")
                row.append(Checkpoint(str(recorded[s][r]), path=path / name))
            checkpoints.append(row)
    assignment = read_assignment_csv(path / ASSIGNMENT_FILE, shards=shards, slices=slices,
                                     seed=seed)
    recipe = None
    if isinstance(config.get("train"), dict):
        from medunlearn.config import from_dict

        try:
            recipe = from_dict(TrainConfig, config["train"], where="config.json train")
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
    model.shards = ShardState(assignment, dict(config["model"]), *state_fields, checkpoints,
                              recipe)


def save_shard_files(folder: str | os.PathLike, model: nn.Module, *,
                     num_classes: int) -> dict | None:
    """Write a sharded model's assignment and slice checkpoints into a run folder being built,
    and return the ``config.json`` ``shards`` section (None for a monolithic model).

    Checkpoints are written only when they describe the model's weights (an approximate method
    that changed the weights leaves none behind: they hold what the method tried to forget, and
    only ``retrain`` can restore exactness then); their SHA-256 are recorded in the section.
    """
    from medunlearn.fileio import atomic_write_bytes

    state = getattr(model, "shards", None) if is_ensemble(model) else None
    if state is None:
        return None
    folder = Path(folder)
    data = write_assignment_csv(folder / ASSIGNMENT_FILE, state)
    exact = state.describes(model)
    digests = None
    if exact:
        digests = []
        for s, row in enumerate(state.checkpoints):
            digests.append([])
            for r, ck in enumerate(row):
                atomic_write_bytes(folder / checkpoint_name(s, r), ck.read())
                digests[-1].append(ck.sha256)
    trained = state.allowed(None)
    counts = state.assignment.class_counts(num_classes, trained)
    return {
        "count": state.shards, "slices": state.slices, "seed": state.assignment.seed,
        "stage_epochs": list(state.epochs), "stage_seeds": state.seeds,
        "assignment": ASSIGNMENT_FILE, "assignment_sha256": hashlib.sha256(data).hexdigest(),
        "groups": len(set(state.assignment.groups.tolist())),
        "images": counts.sum(1).tolist(), "class_counts": counts.tolist(),
        "excluded": sorted(state.excluded), "checkpoints": digests,
        "exact": exact,
    }


def run_sharded_training(data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig,
                         *, seed: int, out: str | os.PathLike, shards: int, slices: int = 1,
                         backend: str = "local", ray_address: str | None = None,
                         num_cpus: int | None = None, overwrite: bool = False,
                         dataset: Dataset | None = None) -> dict:
    """Train a sharded model and write a complete run folder at ``out`` (atomically).

    The folder is a run folder like ``train``'s (``model.safetensors`` holds the ensemble,
    ``config.json`` a ``shards`` section with S, R, the seeds, the stage epochs and per-shard
    class counts), plus ``shards.csv`` (the assignment) and
    ``shards/shard-<s>/slice-<r>.safetensors`` (each shard's checkpoint after each slice). A
    finished run of the same configuration is reused.

    Returns:
        The metrics written to ``metrics.json``.
    """
    from medunlearn.checkpoint import (
        CONFIG_FILE,
        METRICS_FILE,
        MODEL_FILE,
        finished_run_metrics,
        save_weights,
    )
    from medunlearn.data import load_dataset
    from medunlearn.fileio import atomic_write_json, fingerprint, staged_output
    from medunlearn.provenance import environment, now_iso
    from medunlearn.runs.train import recipe, split_metrics, write_manifest
    from medunlearn.training import evaluate_split, resolve_epochs, validate_train_config

    out = Path(out)
    shards = check_count(shards, "--shards")
    slices = check_count(slices, "--slices")
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    dataset = dataset or load_dataset(data_cfg, seed=seed)
    validate_train_config(train_cfg)
    train_cfg = dataclasses.replace(train_cfg,
                                    epochs=resolve_epochs(train_cfg.epochs, len(dataset.train)))
    assign_shards(dataset, shards=shards, slices=slices, seed=seed)  # refuse before any work
    key = fingerprint({"kind": "train", "data": dataset.identity(),
                       "model": dataclasses.asdict(model_cfg), "train": recipe(train_cfg),
                       "seed": seed, "shards": shards, "slices": slices})
    if not overwrite:
        previous = finished_run_metrics(out, key)
        if previous is not None:
            return previous | {"reused": True}
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
                st["steps"] * min(train_cfg.batch_size, max(st["images"], 1))
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


__all__ = [
    "ASSIGNMENT_FILE", "Assignment", "Checkpoint", "SHARDS_DIR", "ShardJob", "ShardState",
    "ShardedFit", "StageJob", "assign_shards", "attach_shard_state", "bucket", "check_count",
    "checkpoint_name", "group_keys", "model_for_config", "retrain_shards", "run_shard_job",
    "run_sharded_training", "save_shard_files", "settle", "shard_state_of", "stage_epochs",
    "stage_seed", "train_sharded",
]

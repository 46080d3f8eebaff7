"""Which shard and slice each training image belongs to: a pure function of its group and the
seed (:func:`assign_shards`), and the seeds and epochs of the slice stages."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from medunlearn.config import TrainConfig
from medunlearn.data import Dataset
from medunlearn.errors import CheckpointError, ConfigError


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


# The smallest batch a constituent trains with: below it batch-norm statistics get noisy.
MIN_SHARD_BATCH = 16


def shard_recipe(train_config: TrainConfig, shards: int) -> TrainConfig:
    """The recipe every constituent of an S-shard model trains with (``S = 1``: ``train_config``
    itself, so one shard is exactly monolithic training).

    For ``S > 1``:

    * batch size ``max(MIN_SHARD_BATCH, round(B / S))`` (never above ``B``). A shard holds
      about ``N / S`` images; at the monolithic batch ``B`` it would take only ``N / (S B)``
      optimiser steps per epoch (TB 64 px at S = 4: ~175 images, one step per epoch, ~30 in
      all), too few for the one-cycle schedule to converge (at B = 128: TB ΔAUC -7.5 pp and
      minority recall -66 pp at R = 4). At ``B / S`` each constituent takes as many steps per
      epoch as the monolithic model, on batches of the same share of its data, so it gets as
      many learning-rate updates for the same epochs; the S constituents together still
      process the ``E * N`` samples of one monolithic training.
    * ``select = "last"``: each constituent keeps its last epoch's weights, with no per-epoch
      validation. Choosing the best epoch costs a pass over the whole validation split after
      every epoch of every stage of every shard, a cost that does not shrink with the shard
      (S times the monolithic model's validation in all, and the same fixed amount inside every
      one-shard retraining). The one-cycle schedule ends at 1 % of its peak learning rate, so
      the last epoch is a settled model; the ensemble's own validation metrics are still
      recorded with the run.

    The result is recorded in the run folder (``config.json`` ``shards.recipe``), and ``sisa``
    and ``retrain`` repeat it, so exactness does not depend on this rule staying the same.
    """
    if shards == 1:
        return train_config
    return dataclasses.replace(
        train_config, select="last",
        batch_size=min(train_config.batch_size,
                       max(MIN_SHARD_BATCH, round(train_config.batch_size / shards))))


def stage_seed(seed: int, shard: int, stage: int) -> int:
    """The seed of one slice stage of one shard: the run seed itself for shard 0's first stage
    (so ``S = R = 1`` is monolithic training), otherwise 63 bits of SHA-256 of (seed, shard,
    stage) (independent of every other stage and run, never drawn from a running generator)."""
    if shard == 0 and stage == 0:
        return int(seed)
    return _u64(int(seed), "stage", f"{shard}/{stage}") >> 1


__all__ = ["MIN_SHARD_BATCH", "Assignment", "assign_shards", "bucket", "check_count", "group_keys",
           "shard_recipe", "stage_epochs", "stage_seed"]

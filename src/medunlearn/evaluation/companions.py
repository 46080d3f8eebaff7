"""Companion models in memory: K models trained with a model's own recipe on given subsets of
its training split (their folder, resumable training and loading: :mod:`medunlearn.runs.shadows`).

Two designs:

* **shadows** (:func:`balanced_halves`): K models on random halves, balanced so that every
  training image is IN (trained on) for exactly ``K // 2`` of them (``K // 2`` or ``K // 2 + 1``
  for odd K) and OUT for the rest. They give every image an IN and an OUT distribution of its
  confidence, the membership evidence of :mod:`medunlearn.evaluation.membership`.
* **K-fold models** (:func:`kfold_masks`): model k trained without fold k, so every image is OUT
  for exactly one of them (an "oracle" that never saw it).

Every member's seed is derived from the base seed and its index (:func:`member_seed`);
:func:`train_members` trains them one at a time in memory (like :mod:`.lira`'s shadows) and
hands each back with its logits on every split. A :class:`CompanionSet` is a complete set in
memory: the membership mask, every member's logits, and the manifest that ties it to its data
(:func:`data_digest`) and to the model it accompanies; :meth:`CompanionSet.trained_on` names the
members that saw given images (a deletion request must delete or replace those).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medunlearn.config import TrainConfig, train_recipe
from medunlearn.data import Dataset
from medunlearn.errors import CheckpointError, ConfigError

SHADOW, KFOLD = "shadow", "kfold"
KINDS = (SHADOW, KFOLD)
MIN_SHADOWS = 4  # fewer leaves each image with one IN or one OUT model (or none)
MIN_FOLDS = 2
SPLITS = ("train", "val", "test")
REBUILD_HINT = "medunlearn shadows ORIGINAL_RUN --k 16 --out NEW_FOLDER"
KFOLD_HINT = "medunlearn shadows RUN --kind kfold --k 5"  # builds RUN/kfold
KFOLD_FOLDER = "kfold"  # a run's K-fold models: RUN/kfold


# ------------------------------------------------------------------------------ designs


def _pool_mask(n: int, pool: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if pool is None:
        return np.ones(n, dtype=bool)
    idx = np.asarray(pool, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise ConfigError(f"Companion pool indices must lie in 0..{n - 1}.")
    out = np.zeros(n, dtype=bool)
    out[idx] = True
    return out


def balanced_halves(n: int, k: int, *, seed: int,
                    pool: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Membership of K shadow models on random halves of ``n`` training images.

    Every image of ``pool`` (default: all) is IN for exactly ``k // 2`` models when K is even;
    for odd K, images alternate (in a seeded order) between ``k // 2`` and ``k // 2 + 1``, so
    every model still gets about half of the pool. Images outside the pool are IN for none.

    Args:
        n: Size of the training split.
        k: Number of models (at least :data:`MIN_SHADOWS`).
        seed: Seeds the design.
        pool: Training indices that may be trained on.

    Returns:
        ``(k, n)`` bool: ``mask[j, i]`` = model j is trained on image i.

    Raises:
        ConfigError: K below :data:`MIN_SHADOWS`.
    """
    if k < MIN_SHADOWS:
        raise ConfigError(
            f"{k} shadow models are too few: with fewer than {MIN_SHADOWS}, an image is IN for "
            "one model or none and OUT for one or none, and no IN/OUT distribution can be "
            f"estimated. Use --k {MIN_SHADOWS} or more (16 to 32 recommended).")
    rng = np.random.default_rng([seed, 0x5AD0])
    in_pool = _pool_mask(n, pool)
    counts = np.full(n, k // 2, dtype=np.int64)
    if k % 2:
        order = rng.permutation(np.flatnonzero(in_pool))
        counts[order[::2]] += 1
    # per image, a random ranking of the K models; the `count` first-ranked train on it
    ranks = rng.random((k, n)).argsort(axis=0).argsort(axis=0)
    mask = ranks < counts[None, :]
    mask[:, ~in_pool] = False
    return mask


def kfold_masks(n: int, k: int, *, seed: int,
                pool: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Membership of K models each trained without one fold: every pool image is OUT for
    exactly one model (folds of near-equal size, seeded); images outside the pool for all.

    Raises:
        ConfigError: K below :data:`MIN_FOLDS`.
    """
    if k < MIN_FOLDS:
        raise ConfigError(f"K-fold models need K >= {MIN_FOLDS}, got {k}.")
    rng = np.random.default_rng([seed, 0xF01D])
    in_pool = _pool_mask(n, pool)
    members = np.flatnonzero(in_pool)
    fold = np.empty(n, dtype=np.int64)
    fold[rng.permutation(members)] = np.arange(len(members)) % k
    mask = np.ones((k, n), dtype=bool)
    mask[fold[members], members] = False
    mask[:, ~in_pool] = False
    return mask


def member_seed(base_seed: int, index: int, kind: str = SHADOW) -> int:
    """The training seed of member ``index``: 31 bits of SHA-256 of ``kind:base:index`` (never
    a small integer that an original, a retrained reference or another member uses)."""
    digest = hashlib.sha256(f"{kind}:{int(base_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def data_digest(data: Dataset) -> str:
    """SHA-256 of the hashes and labels of every image of every split, in order: companions
    apply only to exactly these images (a mask indexes the training split by position)."""
    h = hashlib.sha256()
    for name in SPLITS:
        split = data.splits[name]
        h.update(f"{name}:{len(split)}:".encode())
        for x in split.hashes:
            h.update(bytes.fromhex(x) if is_hex_digest(x) else x.encode())
        h.update(split.labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()


def is_hex_digest(x: str) -> bool:
    """Whether ``x`` is a SHA-256 hex digest (64 hex characters)."""
    try:
        bytes.fromhex(x)
    except ValueError:
        return False
    return len(x) == 64


def mask_digest(mask: np.ndarray) -> str:
    """SHA-256 of a membership design (shape and bits)."""
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes()
                          + str(mask.shape).encode()).hexdigest()


# ------------------------------------------------------------------------------ the set


@dataclass
class CompanionSet:
    """A complete companion set loaded from its folder (outputs in memory, weights on disk)."""

    path: Path
    manifest: dict
    membership: np.ndarray  # (K, N) bool over the training split
    train_hashes: list[str]
    logits: dict[str, np.ndarray] = field(repr=False)  # split -> (K, n, C) float32
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def k(self) -> int:
        return int(self.membership.shape[0])

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def seeds(self) -> list[int]:
        return list(self.manifest["seeds"])

    def labels(self, split: str) -> np.ndarray:
        return np.asarray(self.manifest["labels"][split], dtype=np.int64)

    def confidences(self, split: str, indices: Sequence[int] | np.ndarray | None = None
                    ) -> np.ndarray:
        """Logit-scaled true-class confidences ``(K, n)`` of every member on a split (or its
        ``indices``), the statistic LiRA models (:func:`~medunlearn.evaluation.privacy.
        logit_confidence`)."""
        from medunlearn.evaluation.membership_stats import member_confidences

        if split not in self._cache:
            self._cache[split] = member_confidences(self.logits[split], self.labels(split))
        conf = self._cache[split]
        return conf if indices is None else conf[:, np.asarray(indices, dtype=np.int64)]

    def trained_on(self, indices: Sequence[int] | np.ndarray) -> list[int]:
        """Members trained on any of the given training indices (to delete or replace after
        those images are forgotten)."""
        idx = np.asarray(indices, dtype=np.int64)
        return np.flatnonzero(self.membership[:, idx].any(axis=1)).tolist()

    def trained_on_hashes(self, hashes: Sequence[str]) -> list[int]:
        """Members trained on any image with one of these SHA-256 hashes (every copy)."""
        want = {h.lower() for h in hashes}
        idx = [i for i, h in enumerate(self.train_hashes) if h in want]
        return self.trained_on(idx)

    def check_data(self, data: Dataset) -> None:
        """Refuse data other than the set was trained on.

        Raises:
            CheckpointError: the digests differ (naming the command that rebuilds the set).
        """
        if data_digest(data) != self.manifest["data_digest"]:
            raise CheckpointError(
                f"The companion models in {self.path} were trained on other data (another "
                "dataset, file version, size, view, split or train_limit): their membership "
                "evidence does not apply to these images. Rebuild them for this model: "
                f"{self.manifest.get('rebuild') or REBUILD_HINT}")

    def check_source(self, fingerprints: Sequence[str | None]) -> None:
        """Refuse a set made for another model: its source fingerprint must be one of
        ``fingerprints`` (the evaluated run's own and its original's).

        Raises:
            CheckpointError: naming both models and the rebuild command.
        """
        src = (self.manifest.get("source") or {}).get("fingerprint")
        want = [f for f in fingerprints if f]
        if src is None or not want or src in want:
            return
        raise CheckpointError(
            f"The companion models in {self.path} accompany another model (fingerprint {src}, "
            f"{(self.manifest.get('source') or {}).get('path')}), not this one or its original "
            f"({', '.join(want)}): their recipe or data differ. Rebuild them: "
            f"{self.manifest.get('rebuild') or REBUILD_HINT}")


# ------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class Recipe:
    """How to build and train one companion: a fresh-model factory and the training config.

    ``spec`` is the medunlearn model spec when there is one (recorded and used to reload
    members); ``description`` identifies a custom factory in the manifest."""

    build: Callable[[], torch.nn.Module]
    train: TrainConfig
    spec: dict | None = None
    description: str = ""

    def record(self) -> dict:
        return {"model": self.spec if self.spec is not None else
                {"factory": self.description or "custom"},
                "train": train_recipe(self.train)}


@dataclass
class TrainedMember:
    """One companion trained in memory: the model, its logits on every split, and what the
    training reported."""

    index: int
    model: torch.nn.Module
    logits: dict[str, np.ndarray]  # split -> (n, C) float32
    best_epoch: int | None
    steps: int
    seconds: float


def train_members(data: Dataset, membership: np.ndarray, *, recipe: Recipe,
                  seeds: Sequence[int], todo: Sequence[int] | None = None, runtime=None,
                  eval_runtime=None) -> Iterator[TrainedMember]:
    """Train the members ``todo`` (default: all) of a design, one at a time, in memory.

    Member j is built by ``recipe.build`` right after its seed ``seeds[j]`` is set, trained with
    ``recipe.train`` on the training images of ``membership[j]``, and yielded with its logits on
    the train, val and test splits (fp32 inference).

    Raises:
        ConfigError: a mask that is not ``(K, N)`` over the training split, or a member without
            training images.
    """
    from medunlearn import training
    from medunlearn.evaluation.outputs import split_outputs
    from medunlearn.loop import Runtime

    mask = check_design(data, membership)
    cfg = dataclasses.replace(recipe.train, progress=False)
    rt = runtime or Runtime.create(cfg.device, cfg.precision, cfg.threads)
    eval_rt = eval_runtime or Runtime.create(cfg.device, "fp32", cfg.threads)
    for j in range(mask.shape[0]) if todo is None else todo:
        t0 = time.perf_counter()
        training.seed_everything(seeds[j])
        idx = torch.from_numpy(np.flatnonzero(mask[j]))
        result = training.fit(recipe.build(), data, idx, cfg, seed=seeds[j],
                              desc=f"member {j}", runtime=rt)
        seconds = time.perf_counter() - t0
        logits = {s: np.ascontiguousarray(split_outputs(result.model, data.splits[s],
                                                        runtime=eval_rt).logits,
                                          dtype=np.float32) for s in SPLITS}
        yield TrainedMember(j, result.model, logits, result.best_epoch, result.steps, seconds)


def check_design(data: Dataset, membership: np.ndarray) -> np.ndarray:
    """``membership`` as a ``(K, N)`` bool mask over ``data.train``.

    Raises:
        ConfigError: another shape, or a member without training images.
    """
    mask = np.asarray(membership, dtype=bool)
    n = len(data.train)
    if mask.ndim != 2 or mask.shape[1] != n:
        raise ConfigError(f"The membership must be (K, {n}) over the training split, got "
                          f"{mask.shape}.")
    if (mask.sum(axis=1) == 0).any():
        raise ConfigError("Every companion model needs at least one training image.")
    return mask


__all__ = ["CompanionSet", "KFOLD", "KFOLD_FOLDER", "KFOLD_HINT", "KINDS", "MIN_FOLDS",
           "MIN_SHADOWS", "REBUILD_HINT", "Recipe", "SHADOW", "SPLITS", "TrainedMember",
           "balanced_halves", "check_design",
           "data_digest", "is_hex_digest", "kfold_masks", "mask_digest", "member_seed",
           "train_members"]

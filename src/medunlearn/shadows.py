"""Companion models: K models trained once, with a model's own recipe, on given subsets of its
training split.

Two designs use the same machinery (:func:`train_companions`):

* **shadows** (:func:`balanced_halves`): K models on random halves, balanced so that every
  training image is IN (trained on) for exactly ``K // 2`` of them (``K // 2`` or ``K // 2 + 1``
  for odd K) and OUT for the rest. They give every image an IN and an OUT distribution of its
  confidence, the membership evidence of :mod:`medunlearn.evaluation.membership`.
* **K-fold models** (:func:`kfold_masks`): model k trained without fold k, so every image is OUT
  for exactly one of them (an "oracle" that never saw it).

A companion set is one folder::

    companions.json           manifest: kind, K, seeds, design and data digests, recipe,
                              the source model, the command that rebuilds it
    membership.safetensors    mask (K, N) uint8 over the training split, and the SHA-256 of
                              every training image (N, 32) uint8: who was trained on what
    members/kNN.safetensors   weights of member NN (safetensors, no pickle)
    members/kNN.outputs.safetensors
                              its logits on the train, val and test splits (float32)
    members/kNN.json          written last: seed, time, file digests (the member is done)

Members are trained one at a time and each is written atomically, so an interrupted run resumes
where it stopped (finished members are reused after their digests are checked). A set is
usable once all K members are done. Evaluation reads only the stored outputs: a request costs
no companion forward pass.

Every member's seed is derived from the base seed and its index (:func:`member_seed`). The
manifest ties the set to its data (:func:`data_digest`: hashes and labels of every split) and
to the model it accompanies (its recipe and, for a run folder, its fingerprint);
:func:`load_companions` refuses a set of other data or another model with the command that
rebuilds it. :meth:`CompanionSet.trained_on` names the members that saw given images (a
deletion request must delete or replace those).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from medunlearn.config import TrainConfig, as_config, from_dict
from medunlearn.data import Dataset
from medunlearn.errors import CheckpointError, ConfigError, OutputExistsError
from medunlearn.io import atomic_write_bytes, atomic_write_json, read_json, sha256_file

FORMAT = "medunlearn-companions"
FORMAT_VERSION = 1
MANIFEST_FILE = "companions.json"
MEMBERSHIP_FILE = "membership.safetensors"
MEMBERS_DIR = "members"
CALIBRATION_FILE = "calibration.json"  # derived from the members' outputs (model offsets)
SHADOW, KFOLD = "shadow", "kfold"
KINDS = (SHADOW, KFOLD)
MIN_SHADOWS = 4  # fewer leaves each image with one IN or one OUT model (or none)
MIN_FOLDS = 2
SPLITS = ("train", "val", "test")


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
            h.update(bytes.fromhex(x) if _is_hex(x) else x.encode())
        h.update(split.labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()


def _is_hex(x: str) -> bool:
    try:
        bytes.fromhex(x)
    except ValueError:
        return False
    return len(x) == 64


def _mask_digest(mask: np.ndarray) -> str:
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
        from medunlearn.evaluation.membership import member_confidences

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

    def load_member(self, index: int) -> torch.nn.Module:
        """Member ``index`` as a model (needs a recipe with a medunlearn model spec)."""
        from medunlearn.checkpoint import load_weights
        from medunlearn.training import model_from_spec

        spec = (self.manifest.get("recipe") or {}).get("model")
        if not isinstance(spec, dict) or "arch" not in spec:
            raise CheckpointError(f"{self.path} was trained from a model factory, not a "
                                  "medunlearn model spec; rebuild the model with your factory "
                                  "and load members/kNN.safetensors into it.")
        model = model_from_spec(spec)
        model.load_state_dict(load_weights(self.path / MEMBERS_DIR / f"k{index:02d}.safetensors"))
        return model.eval()

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
                f"{self.manifest.get('rebuild') or _REBUILD_HINT}")

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
            f"{self.manifest.get('rebuild') or _REBUILD_HINT}")


_REBUILD_HINT = "medunlearn shadows ORIGINAL_RUN --k 16 --out NEW_FOLDER"


def _member_paths(out: Path, index: int) -> tuple[Path, Path, Path]:
    base = out / MEMBERS_DIR / f"k{index:02d}"
    return (base.with_suffix(".safetensors"), Path(f"{base}.outputs.safetensors"),
            base.with_suffix(".json"))


def _member_done(out: Path, index: int, key: str) -> dict | None:
    weights, outputs, meta = _member_paths(out, index)
    try:
        info = read_json(meta)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("fingerprint") != key:
        return None
    if not (weights.is_file() and outputs.is_file()):
        return None
    if sha256_file(outputs) != info.get("outputs_sha256"):
        return None
    return info


def _encode_hashes(hashes: Sequence[str]) -> torch.Tensor:
    rows = [bytes.fromhex(h) if _is_hex(h) else hashlib.sha256(h.encode()).digest()
            for h in hashes]
    return torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).reshape(-1, 32)


def _decode_hashes(t: torch.Tensor) -> list[str]:
    return [bytes(r).hex() for r in t.numpy()]


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
        from medunlearn.runs import recipe as train_recipe

        return {"model": self.spec if self.spec is not None else
                {"factory": self.description or "custom"},
                "train": train_recipe(self.train)}


def _check_folder(out: Path, manifest: dict, overwrite: bool) -> None:
    """Allow a new folder, the same design (resume), or with ``overwrite`` any folder."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"{out} is a file; give a folder for the companion models.")
    if not any(out.iterdir()):
        return
    old = None
    try:
        old = read_json(out / MANIFEST_FILE)
    except (OSError, ValueError):
        pass
    if isinstance(old, dict) and old.get("fingerprint") == manifest["fingerprint"]:
        return  # the same design: resume
    if overwrite:
        shutil.rmtree(out)
        return
    what = ("companion models of another design, model or data (K, seed, recipe or images "
            "differ)" if isinstance(old, dict) and old.get("format") == FORMAT else
            "files that are not a companion set")
    raise OutputExistsError(f"{out} already holds {what}. Choose another --out folder, or pass "
                            "--overwrite to replace it.")


def train_companions(data: Dataset, membership: np.ndarray, *, recipe: Recipe,
                     out: str | os.PathLike, kind: str = SHADOW, base_seed: int = 0,
                     source: dict | None = None, rebuild: str | None = None,
                     device: str | None = None, threads: int | None = None,
                     overwrite: bool = False, progress: bool = True) -> CompanionSet:
    """Train one model per row of ``membership`` with ``recipe`` and store the set in ``out``.

    Resumable: members already finished in ``out`` (same design, recipe and data) are reused.

    Args:
        data: The data in memory (the mask indexes ``data.train``).
        membership: ``(K, N)`` bool, row j = the training images of member j
            (:func:`balanced_halves`, :func:`kfold_masks`, or any design).
        recipe: How to build and train a member (the accompanied model's own recipe).
        out: The set's folder.
        kind: ``shadow``, ``kfold`` (recorded; decides how the seeds are derived).
        base_seed: Member j trains with :func:`member_seed` ``(base_seed, j, kind)``.
        source: ``{"path", "fingerprint", "weights_sha256"}`` of the accompanied model.
        rebuild: The command that rebuilds this set (quoted in refusals).
        device, threads: Override the recipe's device and threads.
        overwrite: Replace a folder holding another set.
        progress: Print progress (one line or bar per member).

    Returns:
        The loaded :class:`CompanionSet`.
    """
    from medunlearn.evaluation.outputs import split_outputs
    from medunlearn.loop import Runtime
    from medunlearn.progress import progress_bar
    from medunlearn.provenance import environment
    from medunlearn.training import fit, seed_everything

    if kind not in KINDS:
        raise ConfigError(f"Unknown companion kind {kind!r}; choose one of {KINDS}.")
    mask = np.asarray(membership, dtype=bool)
    n = len(data.train)
    if mask.ndim != 2 or mask.shape[1] != n:
        raise ConfigError(f"The membership must be (K, {n}) over the training split, got "
                          f"{mask.shape}.")
    if (mask.sum(axis=1) == 0).any():
        raise ConfigError("Every companion model needs at least one training image.")
    out = Path(out)
    k = mask.shape[0]
    seeds = [member_seed(base_seed, j, kind) for j in range(k)]
    cfg = recipe.train
    if device is not None or threads is not None:
        cfg = dataclasses.replace(cfg, device=device or cfg.device,
                                  threads=threads if threads is not None else cfg.threads)
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "k": k,
        "base_seed": int(base_seed), "seeds": seeds,
        "design_sha256": _mask_digest(mask), "data_digest": data_digest(data),
        "data": {key: v for key, v in data.identity().items()},
        "dataset": data.name, "n_train": n, "n_in": mask.sum(axis=1).tolist(),
        "recipe": recipe.record(), "source": source,
        "labels": {s: data.splits[s].labels.numpy().tolist() for s in SPLITS},
    }
    from medunlearn.io import fingerprint

    manifest["fingerprint"] = fingerprint({key: manifest[key] for key in (
        "kind", "k", "base_seed", "seeds", "design_sha256", "data_digest", "recipe")}
        | {"source": (source or {}).get("fingerprint")})
    manifest["rebuild"] = rebuild
    _check_folder(out, manifest, overwrite)
    (out / MEMBERS_DIR).mkdir(parents=True, exist_ok=True)
    if not (out / MEMBERSHIP_FILE).is_file():
        atomic_write_bytes(out / MEMBERSHIP_FILE, save(
            {"mask": torch.from_numpy(mask.astype(np.uint8)),
             "train_sha256": _encode_hashes(data.train.hashes)},
            metadata={"design_sha256": manifest["design_sha256"]}))
    if not (out / MANIFEST_FILE).is_file():
        atomic_write_json(out / MANIFEST_FILE, manifest | {"created": _now(),
                                                           "environment": environment()})
    key = manifest["fingerprint"]
    todo = [j for j in range(k) if _member_done(out, j, key) is None]
    rt = Runtime.create(cfg.device, cfg.precision, cfg.threads)
    eval_rt = Runtime.create(cfg.device, "fp32", cfg.threads)
    bar = progress_bar(len(todo), f"{kind} models", enabled=progress, unit="model")
    if progress and len(todo) < k:
        bar.write(f"{k - len(todo)} of {k} {kind} models already trained in {out}: reused")
    train_cfg = dataclasses.replace(cfg, progress=False)
    try:
        for j in todo:
            t0 = time.perf_counter()
            seed_everything(seeds[j])
            model = recipe.build()
            idx = torch.from_numpy(np.flatnonzero(mask[j]))
            result = fit(model, data, idx, train_cfg, seed=seeds[j], desc=f"{kind} {j}",
                         runtime=rt)
            seconds = time.perf_counter() - t0
            logits = {s: torch.from_numpy(np.ascontiguousarray(
                split_outputs(result.model, data.splits[s], runtime=eval_rt).logits,
                dtype=np.float32)) for s in SPLITS}
            weights, outputs, meta = _member_paths(out, j)
            from medunlearn.checkpoint import save_weights

            save_weights(weights, result.model, {"fingerprint": key, "member": j})
            atomic_write_bytes(outputs, save(logits, metadata={"fingerprint": key}))
            atomic_write_json(meta, {
                "member": j, "fingerprint": key, "seed": seeds[j], "n_in": int(mask[j].sum()),
                "best_epoch": result.best_epoch, "steps": result.steps,
                "train_seconds": seconds, "runtime": rt.describe(),
                "weights_sha256": sha256_file(weights), "outputs_sha256": sha256_file(outputs),
                "created": _now()})
            bar.update(1)
    finally:
        bar.close()
    cs = load_companions(out)
    if not (out / CALIBRATION_FILE).is_file():
        write_calibration(cs)
    return cs


def _now() -> str:
    from medunlearn.runs import now_iso

    return now_iso()


def load_companions(path: str | os.PathLike, *, data: Dataset | None = None,
                    fingerprints: Sequence[str | None] | None = None) -> CompanionSet:
    """Load a complete companion set (outputs and membership; weights stay on disk).

    Args:
        path: The set's folder.
        data: When given, refuse a set trained on other data (:meth:`CompanionSet.check_data`).
        fingerprints: When given, refuse a set made for another model
            (:meth:`CompanionSet.check_source`).

    Raises:
        CheckpointError: not a companion set, incomplete (with the command that finishes it),
            corrupt, or made for other data / another model.
    """
    path = Path(path)
    try:
        manifest = read_json(path / MANIFEST_FILE)
    except (OSError, ValueError):
        raise CheckpointError(
            f"{path} is not a companion-model folder (no readable {MANIFEST_FILE}). Train "
            f"shadow models first: '{_REBUILD_HINT}'.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path / MANIFEST_FILE} is not a medunlearn companion manifest.")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has companion format version {manifest.get('version')};"
                              f" this medunlearn reads version {FORMAT_VERSION}. Rebuild it: "
                              f"{manifest.get('rebuild') or _REBUILD_HINT}")
    rebuild = manifest.get("rebuild") or _REBUILD_HINT
    try:
        mem = load_file(str(path / MEMBERSHIP_FILE))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem
        raise CheckpointError(f"{path / MEMBERSHIP_FILE} is missing or unreadable ({exc}). "
                              f"Rebuild the set: {rebuild}") from None
    mask = mem["mask"].numpy().astype(bool)
    if _mask_digest(mask) != manifest.get("design_sha256"):
        raise CheckpointError(f"{path / MEMBERSHIP_FILE} does not match its manifest (design "
                              f"digest differs). Rebuild the set: {rebuild}")
    k = int(manifest["k"])
    missing = [j for j in range(k) if _member_done(path, j, manifest["fingerprint"]) is None]
    if missing:
        raise CheckpointError(
            f"{path} is incomplete: {len(missing)} of {k} {manifest['kind']} models are not "
            f"trained (or their files changed). Run the same command again to finish it "
            f"(finished models are reused): {rebuild}")
    logits: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for j in range(k):
        got = load_file(str(_member_paths(path, j)[1]))
        for s in SPLITS:
            logits[s].append(got[s].numpy())
    cs = CompanionSet(path=path, manifest=manifest, membership=mask,
                      train_hashes=_decode_hashes(mem["train_sha256"]),
                      logits={s: np.stack(v) for s, v in logits.items()})
    if data is not None:
        cs.check_data(data)
    if fingerprints is not None:
        cs.check_source(fingerprints)
    return cs


# ------------------------------------------------------------------------------ front doors


def default_folder(run_dir: str | os.PathLike) -> Path:
    """Where ``medunlearn shadows RUN`` puts the shadows by default: ``RUN/shadows``."""
    return Path(run_dir) / "shadows"


def rebuild_command(run_dir: str | os.PathLike, k: int, seed: int, out: str | os.PathLike
                    ) -> str:
    return f"medunlearn shadows {run_dir} --k {k} --seed {seed} --out {out}"


def companions_for_run(run_dir: str | os.PathLike, *, kind: str = SHADOW, k: int = 16,
                       out: str | os.PathLike | None = None, seed: int | None = None,
                       device: str | None = None, threads: int | None = None,
                       data_root: str | None = None, overwrite: bool = False,
                       progress: bool = True) -> CompanionSet:
    """Train (or finish) K companion models for a run folder with its own recipe and data:
    ``kind="shadow"`` on balanced random halves (:func:`balanced_halves`), ``kind="kfold"``
    each without one fold (:func:`kfold_masks`).

    For an unlearning run, its forgotten and excluded images are left out of every member
    (they are OUT for all; the membership check says "cannot say" for them).

    Args:
        run_dir: A ``train`` (or ``unlearn``) run folder.
        kind: ``shadow`` or ``kfold``.
        k: Number of models (shadows: at least 4, 16 to 32 recommended; K-fold: at least 2).
        out: The set's folder (default ``RUN/shadows`` for shadows, ``RUN/kfold`` for folds).
        seed: Base seed (default: the run's seed).

    Returns:
        The :class:`CompanionSet`.
    """
    from medunlearn.checkpoint import MODEL_FILE, load_run_and_data
    from medunlearn.forget import previously_forgotten
    from medunlearn.training import model_from_spec

    if kind not in KINDS:
        raise ConfigError(f"Unknown companion kind {kind!r}; choose one of {KINDS}.")
    design = balanced_halves if kind == SHADOW else kfold_masks
    design(max(k, 1), k, seed=0)  # refuse a bad K before loading anything
    run, data = load_run_and_data(run_dir, data_root=data_root)
    seed = run.seed if seed is None else int(seed)
    if out is None:
        out = default_folder(run_dir) if kind == SHADOW else Path(run_dir) / "kfold"
    out = Path(out)
    gone = previously_forgotten(run_dir) if run.config.get("kind") == "unlearn" else []
    pool = np.setdiff1d(np.arange(len(data.train)), np.asarray(gone, dtype=np.int64))
    mask = design(len(data.train), k, seed=seed, pool=pool)
    spec = run.config["model"]
    train_cfg = from_dict(TrainConfig, run.config.get("train") or {}, where="config.json train")
    recipe = Recipe(build=lambda: model_from_spec(spec), train=train_cfg, spec=spec)
    source = {"path": str(Path(run_dir).resolve()), "fingerprint": run.config.get("fingerprint"),
              "weights_sha256": sha256_file(Path(run_dir) / MODEL_FILE),
              "kind": run.config.get("kind")}
    rebuild = rebuild_command(run_dir, k, seed, out) if kind == SHADOW else (
        f"medunlearn.shadows.companions_for_run({str(run_dir)!r}, kind='kfold', k={k}, "
        f"seed={seed}, out={str(out)!r})")
    return train_companions(data, mask, recipe=recipe, out=out, kind=kind, base_seed=seed,
                            source=source, rebuild=rebuild, device=device, threads=threads,
                            overwrite=overwrite, progress=progress)


def shadows_for_run(run_dir: str | os.PathLike, *, k: int = 16, out: str | os.PathLike | None
                    = None, seed: int | None = None, device: str | None = None,
                    threads: int | None = None, data_root: str | None = None,
                    overwrite: bool = False, progress: bool = True) -> CompanionSet:
    """K shadow models of a run folder (:func:`companions_for_run` with ``kind="shadow"``);
    ``out`` defaults to ``RUN/shadows``."""
    return companions_for_run(run_dir, kind=SHADOW, k=k, out=out, seed=seed, device=device,
                              threads=threads, data_root=data_root, overwrite=overwrite,
                              progress=progress)


def train_shadows(model: torch.nn.Module, data: Dataset, *, out: str | os.PathLike, k: int = 16,
                  seed: int = 0, train_config: TrainConfig | dict | None = None,
                  model_factory: Callable[[], torch.nn.Module] | str | None = None,
                  device: str | None = "auto", overwrite: bool = False,
                  progress: bool = False) -> CompanionSet:
    """Python API: K shadow models for an in-memory model (rebuilt as ``retrain`` rebuilds it:
    ``model_factory``, the spec of a medunlearn model, or a re-initialised copy) trained with
    ``train_config`` (the model's recipe) on balanced random halves of ``data.train``."""
    from medunlearn.api import _factory
    from medunlearn.models.adapter import as_classifier, reinitialized
    from medunlearn.training import model_from_spec

    cfg = as_config(TrainConfig, train_config, where="train_config")
    factory = _factory(model_factory, data)
    spec = getattr(model, "spec", None) if factory is None else None
    if factory is not None:
        build, desc = factory, getattr(model_factory, "__name__", str(model_factory))
    elif isinstance(spec, dict):
        build, desc = (lambda: model_from_spec(spec)), ""
    else:
        template = as_classifier(model)
        # called right after the member's seed is set: each member starts from its own weights
        build, desc = (lambda: reinitialized(template, torch.initial_seed())), \
            type(model).__name__
    recipe = Recipe(build=build, train=cfg, spec=spec if isinstance(spec, dict) else None,
                    description=desc)
    mask = balanced_halves(len(data.train), k, seed=seed)
    return train_companions(data, mask, recipe=recipe, out=out, kind=SHADOW, base_seed=seed,
                            device=device, overwrite=overwrite, progress=progress)


# ------------------------------------------------------------------------------ evidence


def _pseudo_member(cs: CompanionSet, split: str) -> np.ndarray:
    """A balanced pseudo membership of a split nobody trained on: its IN rows are ignored,
    so that each image's OUT means average as many shadows as a training image's."""
    n = cs.logits[split].shape[1]
    code = SPLITS.index(split) + 1
    return balanced_halves(n, cs.k, seed=int(cs.manifest["base_seed"]) * 10 + code)


def _globals(cs: CompanionSet):
    from medunlearn.evaluation.membership import Globals

    if "globals" not in cs._cache:
        cs._cache["globals"] = Globals.from_confidences(cs.confidences("train"), cs.membership)
    return cs._cache["globals"]


def model_offset(cs: CompanionSet, known_out: Sequence[str] = ("val",)) -> dict:
    """:func:`medunlearn.evaluation.membership.model_offset_variance` of a shadow set,
    computed once per set and calibration split (cached)."""
    from medunlearn.evaluation.membership import model_offset_variance

    key = ("offset", tuple(known_out))
    if key in cs._cache:
        return cs._cache[key]
    stored = None
    try:
        stored = read_json(cs.path / CALIBRATION_FILE)
    except (OSError, ValueError):
        pass
    if (isinstance(stored, dict) and stored.get("fingerprint") == cs.manifest["fingerprint"]
            and stored.get("known_out") == list(known_out)):
        cs._cache[key] = stored["model_offset"]
        return cs._cache[key]
    cs._cache[key] = model_offset_variance(
        cs.confidences("train"), cs.membership,
        np.concatenate([cs.confidences(s) for s in known_out], axis=1),
        np.concatenate([_pseudo_member(cs, s) for s in known_out], axis=1),
        labels=cs.labels("train"),
        known_out_labels=np.concatenate([cs.labels(s) for s in known_out]),
        num_classes=int(cs.logits["train"].shape[2]))
    return cs._cache[key]


def write_calibration(cs: CompanionSet) -> None:
    """Store what every evaluation would otherwise recompute from the members' outputs (the
    model-offset variance, about a second), so that a request only runs the test."""
    if cs.kind != SHADOW:
        return
    known_out = calibration_splits(cs)
    atomic_write_json(cs.path / CALIBRATION_FILE, {
        "fingerprint": cs.manifest["fingerprint"], "known_out": list(known_out),
        "model_offset": model_offset(cs, known_out)})


MIN_VALIDATION = 200  # with fewer validation images the test split calibrates too


def calibration_splits(cs: CompanionSet) -> tuple[str, ...]:
    """The splits nobody trained on that calibrate a candidate: the validation split (from
    the training pool), plus the test split when it has fewer than :data:`MIN_VALIDATION`
    images (e.g. the TB set's 80)."""
    return ("val",) if cs.logits["val"].shape[1] >= MIN_VALIDATION else ("val", "test")


def membership_section(cs: CompanionSet, outputs, *, forget: np.ndarray, retain: np.ndarray,
                       known_out: Sequence[str] | None = None, alpha: float | None = None,
                       min_power: float | None = None) -> dict:
    """The membership evidence of one candidate on its forget set, as a record section.

    Args:
        cs: The shadow set (kind ``shadow``).
        outputs: The candidate's outputs on ``forget``, ``retain``, ``val`` and ``test``
            (:func:`medunlearn.evaluation.outputs.model_outputs`), already computed by the
            verification: nothing runs a network here.
        forget, retain: Training indices of those outputs' forget and retain rows.
        known_out: Splits nobody trained on, to calibrate the candidate's OUT behaviour
            (default: :func:`calibration_splits`).
        alpha, min_power: The test's level and the power below which it says "cannot say".

    Returns:
        :func:`medunlearn.evaluation.membership.membership_evidence`'s dict with per-image rows
        (index, SHA-256, numbers, status) under ``images``.
    """
    from medunlearn.evaluation import membership as M
    from medunlearn.evaluation.privacy import logit_confidence

    if cs.kind != SHADOW:
        raise ConfigError(f"{cs.path} holds {cs.kind} models; membership evidence needs shadow "
                          "models on random halves ('medunlearn shadows RUN').")
    forget = np.asarray(forget, dtype=np.int64)
    retain = np.asarray(retain, dtype=np.int64)
    known_out = tuple(known_out or calibration_splits(cs))

    def phi(o):
        return logit_confidence(o.probs, o.labels)

    ko = np.concatenate([phi(outputs[s]) for s in known_out])
    ko_conf = np.concatenate([cs.confidences(s) for s in known_out], axis=1)
    ko_mem = np.concatenate([_pseudo_member(cs, s) for s in known_out], axis=1)
    res = M.membership_evidence(
        target=phi(outputs["forget"]), target_conf=cs.confidences("train", forget),
        target_member=cs.membership[:, forget], known_out=ko, known_out_conf=ko_conf,
        known_out_member=ko_mem, known_in=phi(outputs["retain"]),
        known_in_conf=cs.confidences("train", retain), known_in_member=cs.membership[:, retain],
        globals_=_globals(cs), labels=(outputs["forget"].labels, np.concatenate(
            [outputs[s].labels for s in known_out]), outputs["retain"].labels),
        num_classes=int(cs.logits["train"].shape[2]),
        offset_var=model_offset(cs, known_out)["offset_var"],
        alpha=M.DEFAULT_ALPHA if alpha is None else alpha,
        min_power=M.DEFAULT_MIN_POWER if min_power is None else min_power)
    images = res.pop("images", None)
    if images is not None:
        rows = []
        for j, i in enumerate(forget.tolist()):
            row = {"index": i, "sha256": cs.train_hashes[i]}
            for key, arr in images.items():
                val = arr[j]
                row[key] = str(val) if key == "status" else (
                    float(val) if np.isfinite(val) else None)
            rows.append(row)
        res["images"] = rows
    res["known_out"] = list(known_out)
    res["assumption"] = (f"given their shadow features, the forgotten images behave for a model "
                         f"that never saw them like the {' and '.join(known_out)} images (true "
                         "for images drawn at random from the training pool)")
    return res


def attach_membership(record: dict, outs, cs: CompanionSet | None, *, forget: np.ndarray,
                      retain: np.ndarray, rebuild: str | None = None) -> dict:
    """Add every evaluated model's membership section to an evaluation record
    (``models.<role>.membership``) and describe the shadow set (``membership``); without a set,
    record why the check did not run and the command that enables it (``skipped``).

    ``outs``: role -> outputs, as given to ``evaluate_outputs``. Returns ``record``.
    """
    if cs is None:
        record.setdefault("skipped", {})["membership"] = (
            "not run: no shadow models given. Train them once for the original model ("
            f"'{rebuild or 'medunlearn shadows ORIGINAL_RUN --k 16'}') and pass --shadows "
            "(evaluate) or shadows= (medunlearn.evaluate)")
        return record
    import time

    t0 = time.perf_counter()
    done: dict[int, dict] = {}
    for role, o in outs.items():
        if id(o) not in done:
            done[id(o)] = membership_section(cs, o, forget=forget, retain=retain)
        if record["models"].get(role) is not None:
            record["models"][role]["membership"] = done[id(o)]
    record["membership"] = {"path": str(cs.path), "k": cs.k, "kind": cs.kind,
                            "fingerprint": cs.manifest["fingerprint"],
                            "source": cs.manifest.get("source"),
                            "seconds": time.perf_counter() - t0}
    return record


__all__ = ["CompanionSet", "KFOLD", "MIN_SHADOWS", "Recipe", "SHADOW", "attach_membership",
           "balanced_halves", "companions_for_run", "data_digest", "default_folder",
           "kfold_masks", "load_companions", "member_seed", "membership_section",
           "shadows_for_run", "train_companions", "train_shadows"]

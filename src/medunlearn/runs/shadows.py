"""Companion-model folders: K companion models (shadows on random halves, K-fold models) of a
model, trained once with its own recipe and stored resumably; loaded back as a
:class:`medunlearn.evaluation.companions.CompanionSet` (the in-memory set and its training).

A companion set is one folder::

    companions.json           manifest: kind, K, seeds, design and data digests, recipe,
                              the source model, the command that rebuilds it
    membership.safetensors    mask (K, N) uint8 over the training split, and the SHA-256 of
                              every training image (N, 32) uint8: who was trained on what
    members/kNN.safetensors   weights of member NN (safetensors, no pickle)
    members/kNN.outputs.safetensors
                              its logits on the train, val and test splits (float32)
    members/kNN.json          written last: seed, time, file digests (the member is done)
    calibration.json          derived from the members' outputs (the model-offset variance)

Members are trained one at a time and each is written atomically, so an interrupted run resumes
where it stopped (finished members are reused after their digests are checked). A set is
usable once all K members are done. Evaluation reads only the stored outputs: a request costs
no companion forward pass. :func:`load_companions` refuses a set of other data or another model
with the command that rebuilds it.

Front doors: :func:`companions_for_run` / :func:`shadows_for_run` (a run folder, with its own
recipe and data; ``medunlearn shadows``) and :func:`train_shadows` (a model in memory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from medunlearn import api
from medunlearn.checkpoint import (
    MODEL_FILE,
    load_run_and_data,
    load_weights,
    previously_forgotten,
    save_weights,
)
from medunlearn.config import TrainConfig, as_config, from_dict
from medunlearn.data import Dataset
from medunlearn.errors import CheckpointError, ConfigError, OutputExistsError
from medunlearn.evaluation.companions import (
    KFOLD_FOLDER,
    KINDS,
    REBUILD_HINT,
    SHADOW,
    SPLITS,
    CompanionSet,
    Recipe,
    balanced_halves,
    check_design,
    data_digest,
    is_hex_digest,
    kfold_masks,
    mask_digest,
    member_seed,
    train_members,
)
from medunlearn.evaluation.membership import calibration_splits, model_offset
from medunlearn.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    fingerprint,
    read_json,
    sha256_file,
)
from medunlearn.loop import Runtime
from medunlearn.models.adapter import as_classifier, reinitialized
from medunlearn.progress import progress_bar
from medunlearn.provenance import environment, now_iso
from medunlearn.training import model_from_spec

FORMAT = "medunlearn-companions"
FORMAT_VERSION = 1
MANIFEST_FILE = "companions.json"
MEMBERSHIP_FILE = "membership.safetensors"
MEMBERS_DIR = "members"
CALIBRATION_FILE = "calibration.json"  # derived from the members' outputs (model offsets)


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
    rows = [bytes.fromhex(h) if is_hex_digest(h) else hashlib.sha256(h.encode()).digest()
            for h in hashes]
    return torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).reshape(-1, 32)


def _decode_hashes(t: torch.Tensor) -> list[str]:
    return [bytes(r).hex() for r in t.numpy()]


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
                     overwrite: bool = False, progress: bool = True,
                     reuse_from: str | os.PathLike | None = None,
                     blank_unused: bool = False) -> CompanionSet:
    """Train one model per row of ``membership`` with ``recipe`` and store the set in ``out``
    (:func:`medunlearn.evaluation.companions.train_members`, each member written atomically
    as soon as it is trained).

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
        reuse_from: A complete set of the same kind, seeds, recipe and data (e.g. the set this
            one replaces after some images were withdrawn): each of its members whose row of the
            design is unchanged is copied (weights and outputs, byte for byte) instead of being
            trained again; the others are trained (same seed, so the same model the design
            gives). The copy's record names where it came from (``copied_from``).
        blank_unused: Store no outputs (NaN rows) on the training images that no member is
            trained on: for images withdrawn from the data (a deletion registry's forgotten
            images), whose outputs would be data derived from them. The membership test never
            uses those rows (an image without an IN model is untestable).

    Returns:
        The loaded :class:`CompanionSet`.
    """
    if kind not in KINDS:
        raise ConfigError(f"Unknown companion kind {kind!r}; choose one of {KINDS}.")
    mask = check_design(data, membership)
    out = Path(out)
    k = mask.shape[0]
    seeds = [member_seed(base_seed, j, kind) for j in range(k)]
    cfg = recipe.train
    if device is not None or threads is not None:
        cfg = dataclasses.replace(cfg, device=device or cfg.device,
                                  threads=threads if threads is not None else cfg.threads)
        recipe = dataclasses.replace(recipe, train=cfg)
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "k": k,
        "base_seed": int(base_seed), "seeds": seeds,
        "design_sha256": mask_digest(mask), "data_digest": data_digest(data),
        "data": dict(data.identity()),
        "dataset": data.name, "n_train": len(data.train), "n_in": mask.sum(axis=1).tolist(),
        "recipe": recipe.record(), "source": source,
        "labels": {s: data.splits[s].labels.numpy().tolist() for s in SPLITS},
    }
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
        atomic_write_json(out / MANIFEST_FILE, manifest | {"created": now_iso(),
                                                           "environment": environment()})
    key = manifest["fingerprint"]
    unused = np.flatnonzero(~mask.any(axis=0)) if blank_unused else np.empty(0, np.int64)
    todo = [j for j in range(k) if _member_done(out, j, key) is None]
    if reuse_from is not None:
        todo = _copy_unchanged(Path(reuse_from), out, mask, manifest, todo, unused)
    rt = Runtime.create(cfg.device, cfg.precision, cfg.threads)
    bar = progress_bar(len(todo), f"{kind} models", enabled=progress, unit="model")
    if progress and len(todo) < k:
        bar.write(f"{k - len(todo)} of {k} {kind} models already trained in {out}: reused")
    try:
        for m in train_members(data, mask, recipe=recipe, seeds=seeds, todo=todo, runtime=rt):
            weights, outputs, meta = _member_paths(out, m.index)
            save_weights(weights, m.model, {"fingerprint": key, "member": m.index})
            atomic_write_bytes(outputs, _outputs_bytes(m.logits, unused, key))
            atomic_write_json(meta, {
                "member": m.index, "fingerprint": key, "seed": seeds[m.index],
                "n_in": int(mask[m.index].sum()), "best_epoch": m.best_epoch, "steps": m.steps,
                "train_seconds": m.seconds, "runtime": rt.describe(),
                "weights_sha256": sha256_file(weights), "outputs_sha256": sha256_file(outputs),
                "created": now_iso()})
            bar.update(1)
    finally:
        bar.close()
    cs = load_companions(out)
    if not (out / CALIBRATION_FILE).is_file():
        write_calibration(cs)
    return cs


def _outputs_bytes(logits: dict[str, np.ndarray], unused: np.ndarray, key: str) -> bytes:
    """A member's outputs file; the training rows ``unused`` are stored as NaN."""
    logits = dict(logits)
    if len(unused):
        train = np.array(logits["train"], dtype=np.float32, copy=True)  # (N, C)
        train[unused] = np.nan
        logits["train"] = train
    return save({s: torch.from_numpy(np.ascontiguousarray(v)) for s, v in logits.items()},
                metadata={"fingerprint": key})


def _copy_unchanged(old: Path, out: Path, mask: np.ndarray, manifest: dict,
                    todo: list[int], unused: np.ndarray) -> list[int]:
    """Copy into ``out`` the members of the set in ``old`` that ``mask`` leaves unchanged (same
    seed, recipe, data and training images): the weights byte for byte, the outputs with the
    rows ``unused`` blanked; returns the members still to train."""
    try:
        prev = load_companions(old)
    except CheckpointError:
        return todo
    pm = prev.manifest
    same = (pm.get("kind") == manifest["kind"] and pm.get("recipe") == manifest["recipe"]
            and pm.get("data_digest") == manifest["data_digest"]
            and prev.membership.shape == mask.shape)
    if not same:
        return todo
    left = []
    for j in todo:
        if pm["seeds"][j] != manifest["seeds"][j] or not np.array_equal(prev.membership[j],
                                                                         mask[j]):
            left.append(j)
            continue
        src, dst = _member_paths(old, j), _member_paths(out, j)
        atomic_write_bytes(dst[0], src[0].read_bytes())
        got = {s: v.numpy() for s, v in load_file(str(src[1])).items()}
        atomic_write_bytes(dst[1], _outputs_bytes(got, unused, manifest["fingerprint"]))
        info = read_json(src[2]) | {"fingerprint": manifest["fingerprint"],
                                    "outputs_sha256": sha256_file(dst[1]),
                                    "copied_from": str(old), "created": now_iso()}
        atomic_write_json(dst[2], info)
    return left


def _restore_calibration(cs: CompanionSet) -> None:
    """Put the stored model-offset calibration of ``cs`` (:func:`write_calibration`) into its
    in-memory cache, so that an evaluation does not recompute it."""
    try:
        stored = read_json(cs.path / CALIBRATION_FILE)
    except (OSError, ValueError):
        return
    if (isinstance(stored, dict) and stored.get("fingerprint") == cs.manifest["fingerprint"]
            and isinstance(stored.get("known_out"), list) and "model_offset" in stored):
        cs._cache[("offset", tuple(stored["known_out"]))] = stored["model_offset"]


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
            f"shadow models first: '{REBUILD_HINT}'.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path / MANIFEST_FILE} is not a medunlearn companion manifest.")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has companion format version {manifest.get('version')};"
                              f" this medunlearn reads version {FORMAT_VERSION}. Rebuild it: "
                              f"{manifest.get('rebuild') or REBUILD_HINT}")
    rebuild = manifest.get("rebuild") or REBUILD_HINT
    try:
        mem = load_file(str(path / MEMBERSHIP_FILE))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem
        raise CheckpointError(f"{path / MEMBERSHIP_FILE} is missing or unreadable ({exc}). "
                              f"Rebuild the set: {rebuild}") from None
    mask = mem["mask"].numpy().astype(bool)
    if mask_digest(mask) != manifest.get("design_sha256"):
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
    _restore_calibration(cs)
    if data is not None:
        cs.check_data(data)
    if fingerprints is not None:
        cs.check_source(fingerprints)
    return cs


def load_member(cs: CompanionSet, index: int) -> torch.nn.Module:
    """Member ``index`` of a set as a model (needs a recipe with a medunlearn model spec)."""
    spec = (cs.manifest.get("recipe") or {}).get("model")
    if not isinstance(spec, dict) or "arch" not in spec:
        raise CheckpointError(f"{cs.path} was trained from a model factory, not a "
                              "medunlearn model spec; rebuild the model with your factory "
                              "and load members/kNN.safetensors into it.")
    model = model_from_spec(spec)
    model.load_state_dict(load_weights(cs.path / MEMBERS_DIR / f"k{index:02d}.safetensors"))
    return model.eval()


def write_calibration(cs: CompanionSet) -> None:
    """Store what every evaluation would otherwise recompute from the members' outputs (the
    model-offset variance, about a second), so that a request only runs the test."""
    if cs.kind != SHADOW:
        return
    known_out = calibration_splits(cs)
    atomic_write_json(cs.path / CALIBRATION_FILE, {
        "fingerprint": cs.manifest["fingerprint"], "known_out": list(known_out),
        "model_offset": model_offset(cs, known_out)})


def default_folder(run_dir: str | os.PathLike, kind: str = SHADOW) -> Path:
    """Where ``medunlearn shadows RUN`` puts a set by default: ``RUN/shadows`` for shadows,
    ``RUN/kfold`` for K-fold models (where ``oracle-match`` looks for them)."""
    return Path(run_dir) / ("shadows" if kind == SHADOW else KFOLD_FOLDER)


def rebuild_command(run_dir: str | os.PathLike, k: int, seed: int, out: str | os.PathLike,
                    kind: str = SHADOW) -> str:
    flag = "" if kind == SHADOW else f" --kind {kind}"
    return f"medunlearn shadows {run_dir}{flag} --k {k} --seed {seed} --out {out}"


def run_recipe(config: dict) -> Recipe:
    """The recipe of a run folder's model (its ``config.json``): its model spec and training
    config."""
    spec = config["model"]
    train_cfg = from_dict(TrainConfig, config.get("train") or {}, where="config.json train")
    return Recipe(build=lambda: model_from_spec(spec), train=train_cfg, spec=spec)


def training_seconds(path: str | os.PathLike) -> list[float]:
    """The training time of each member of the companion set at ``path``, in member order
    (what building the set cost: its one-time price, or a request's rebuild of fold models)."""
    return [read_json(m)["train_seconds"]
            for m in sorted((Path(path) / MEMBERS_DIR).glob("k*.json"))]


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
    if kind not in KINDS:
        raise ConfigError(f"Unknown companion kind {kind!r}; choose one of {KINDS}.")
    design = balanced_halves if kind == SHADOW else kfold_masks
    design(max(k, 1), k, seed=0)  # refuse a bad K before loading anything
    run, data = load_run_and_data(run_dir, data_root=data_root)
    seed = run.seed if seed is None else int(seed)
    if out is None:
        out = default_folder(run_dir, kind)
    out = Path(out)
    gone = previously_forgotten(run_dir) if run.config.get("kind") == "unlearn" else []
    pool = np.setdiff1d(np.arange(len(data.train)), np.asarray(gone, dtype=np.int64))
    mask = design(len(data.train), k, seed=seed, pool=pool)
    recipe = run_recipe(run.config)
    source = {"path": str(Path(run_dir).resolve()), "fingerprint": run.config.get("fingerprint"),
              "weights_sha256": sha256_file(Path(run_dir) / MODEL_FILE),
              "kind": run.config.get("kind")}
    rebuild = rebuild_command(run_dir, k, seed, out, kind)
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
    ``model_factory`` as :func:`medunlearn.api.unlearn` takes it, the model's own medunlearn
    spec, or a re-initialised copy) trained with
    ``train_config`` (the model's recipe) on balanced random halves of ``data.train``."""
    cfg = as_config(TrainConfig, train_config, where="train_config")
    factory, spec = api._factory(model_factory, data)  # spec: a medunlearn model spec given
    if factory is None and spec is None:
        spec = getattr(model, "spec", None)
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


__all__ = ["CALIBRATION_FILE", "MANIFEST_FILE", "companions_for_run", "default_folder",
           "load_companions", "load_member", "rebuild_command", "run_recipe", "shadows_for_run",
           "train_companions", "train_shadows", "training_seconds", "write_calibration"]

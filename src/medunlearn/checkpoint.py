"""The run folder: its files, and how to read and write them (the one place that knows).

A run folder (from ``train``, ``unlearn`` or anything else that produces a model) holds:

* ``model.safetensors``: the weights (loaded without pickle),
* ``config.json``: the resolved configuration, seed, data description, code version, and the
  ``model`` spec needed to rebuild the network,
* ``metrics.json``: results and timings,
* ``manifest.csv`` (training runs), ``forget.csv`` and ``excluded.csv`` (unlearning runs):
  *index CSVs*, one training image per row as ``index,sha256,label`` (hashes, never pixels),
* ``history.json`` and ``curve.png`` (training runs),
* ``shards.csv`` and ``shards/shard-<s>/slice-<r>.safetensors`` (sharded runs): the shard and
  slice of every training image and each shard's checkpoint after each slice
  (:func:`save_shard_files`, :func:`attach_shard_state`).

Every command that takes a model takes such a folder. Index CSVs are written by
:func:`write_index_rows` and read by :func:`read_index_rows`, here and nowhere else, so their
format has one definition (the registry's manifests and exclusion lists use them too).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from medunlearn.config import TrainConfig, from_dict
from medunlearn.data import Dataset, load_from_record
from medunlearn.errors import CheckpointError, ConfigError, ForgetSetError, MedUnlearnError
from medunlearn.fileio import (
    atomic_write_bytes,
    canonical_safetensors,
    read_index_rows,
    read_json,
    sha256_file,
    write_index_rows,
)
from medunlearn.models import Classifier
from medunlearn.models.ensemble import EnsembleClassifier, is_ensemble
from medunlearn.sharding import Assignment, Checkpoint, ShardState, check_count
from medunlearn.training import model_from_spec

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"  # training runs: one row per epoch
CURVE_FILE = "curve.png"  # training runs: the training curve
MANIFEST_FILE = "manifest.csv"  # training runs: every training image (index CSV)
FORGET_FILE = "forget.csv"  # unlearning runs: the images forgotten (index CSV)
EXCLUDED_FILE = "excluded.csv"  # unlearning runs: images forgotten earlier (index CSV)
EVALUATION_FILE = "evaluation.json"  # what 'medunlearn pipeline' writes into the unlearned run
INDEX_COLUMNS = ("index", "sha256", "label")
ASSIGNMENT_FILE = "shards.csv"  # sharded runs: shard and slice of every training image
SHARDS_DIR = "shards"  # sharded runs: shards/shard-<s>/slice-<r>.safetensors (checkpoint_name)
ASSIGNMENT_COLUMNS = INDEX_COLUMNS + ("patient_id", "group", "shard", "slice")


def save_weights(path: str | os.PathLike, model: torch.torch.nn.Module,
                 metadata: dict | None = None) -> Path:
    """Write a model's state dict to ``path`` as safetensors, atomically and byte-reproducibly
    (the same weights and metadata always give the same file, so model hashes in certificates
    and checks agree for identical models)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "medunlearn"} | {k: str(v) for k, v in (metadata or {}).items()}
    return atomic_write_bytes(path, canonical_safetensors(save(state, metadata=meta)))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file (no pickle involved)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}). It is corrupt or truncated: "
            "restore it from a good copy or train the model again."
        ) from exc


@dataclass
class Run:
    """A run folder loaded into memory."""

    path: Path
    config: dict
    model: Classifier
    metrics: dict | None

    @property
    def data_record(self) -> dict:
        """How to load the data this run was trained on (``config.json`` ``data``)."""
        data = self.config.get("data")
        if not isinstance(data, dict):
            raise CheckpointError(
                f"{self.path / CONFIG_FILE} has no 'data' section, so the data this model was "
                "trained on is unknown. Point at a run folder written by 'medunlearn train' or "
                "'medunlearn unlearn' (or restore its config.json)."
            )
        return data

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def load_dataset(self, *, cache=None, **overrides) -> Dataset:
        """Load the data this run was trained on (``overrides`` e.g. ``data_root=...``;
        ``cache``: a :class:`medunlearn.cache.Session` keeping loaded datasets)."""
        dataset = load_from_record(self.data_record, seed=self.seed, cache=cache, **overrides)
        check_compatible(self, dataset)
        return dataset


def load_run(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Run:
    """Load a run folder: rebuild the model from its config and load its weights.

    Raises:
        CheckpointError: missing files, unreadable weights, or weights that do not match the
            architecture described in ``config.json``.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"Model folder {path} does not exist. Pass the --out folder of a 'medunlearn train' "
            "or 'medunlearn unlearn' run."
        )
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (path / name).is_file():
            raise CheckpointError(
                f"{path} has no {name}, so it is not a complete medunlearn run folder (an "
                "interrupted run leaves nothing behind; this folder came from elsewhere). Point "
                "at the --out folder of a finished run."
            )
    try:
        config = read_json(path / CONFIG_FILE)
        spec = config["model"]
        model = model_for_config(config)  # an ensemble for a sharded run
    except (ValueError, KeyError, TypeError, ConfigError) as exc:  # incl. not UTF-8, not JSON
        raise CheckpointError(
            f"{path / CONFIG_FILE} is not a valid medunlearn run config ({str(exc)[:200]}). "
            "Restore it or train the model again."
        ) from None
    state = load_weights(path / MODEL_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"The weights in {path / MODEL_FILE} do not fit the {spec.get('arch')} network "
            f"described in its config.json ({first}). The folder mixes files from different runs;"
            " train again or restore the matching files."
        ) from exc
    attach_shard_state(model, path, config)  # sharded run: assignment and slice checkpoints
    model.to(device).eval()
    try:
        metrics = read_json(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else None
    except ValueError as exc:  # not UTF-8 or not JSON
        raise CheckpointError(
            f"{path / METRICS_FILE} is not valid JSON ({str(exc)[:200]}). Restore it from the "
            "run, or delete it (it is rewritten by 'medunlearn evaluate')."
        ) from None
    return Run(path, config, model, metrics)


def check_compatible(run: Run, dataset: Dataset) -> None:
    """Refuse a model whose input channels or classes differ from the data's.

    Raises:
        CheckpointError: naming both shapes and the fix.
    """
    spec = run.config["model"]
    problems = []
    if spec["in_channels"] != dataset.in_channels:
        problems.append(f"it takes {spec['in_channels']}-channel images but {dataset.name} "
                        f"has {dataset.in_channels} channel(s)")
    if spec["num_classes"] != dataset.num_classes:
        problems.append(f"it has {spec['num_classes']} output classes but the {dataset.view.kind} "
                        f"view of {dataset.name} has {dataset.num_classes}")
    if spec.get("size", dataset.size) != dataset.size:
        problems.append(f"it was trained on {spec['size']} px images, the data are "
                        f"{dataset.size} px")
    if problems:
        raise CheckpointError(
            f"The model in {run.path} does not match the data: {'; '.join(problems)}. Use the "
            "dataset, view and size the model was trained with (see its config.json), or train a "
            "model for this data."
        )


def load_run_and_data(path: str | os.PathLike, *, data_root: str | None = None, cache=None,
                      **overrides) -> tuple[Run, Dataset]:
    """Load a run folder and the dataset it was trained on, checked against each other
    (``cache``: see :meth:`Run.load_dataset`)."""
    run = load_run(path)
    if data_root:
        overrides["data_root"] = data_root
    return run, run.load_dataset(cache=cache, **overrides)


# --------------------------------------------------------------------------- index CSVs


def write_index_csv(path: str | os.PathLike, dataset: Dataset, indices: Iterable[int], *,
                    patients: bool = False) -> Path:
    """Write ``index,sha256,label`` of training images of ``dataset``; with ``patients`` and
    data that has patient ids, a ``patient_id`` column too (run manifests, forget and excluded
    sets)."""
    train = dataset.train
    with_patients = patients and train.patient_ids is not None
    hashes, labels, pids = train.hashes, train.labels.tolist(), train.patient_ids
    rows = ([int(i), hashes[int(i)], int(labels[int(i)])]
            + ([pids[int(i)]] if with_patients else []) for i in indices)
    return write_index_rows(path, INDEX_COLUMNS + (("patient_id",) if with_patients else ()),
                            rows)


def _index_rows(path: str | os.PathLike, *, what: str,
                error: type[MedUnlearnError] = ForgetSetError) -> list[dict[str, str]]:
    """The rows of an index CSV that has an ``index`` column, read errors worded as ``error``."""
    try:
        header, rows = read_index_rows(path)
    except OSError as exc:
        raise error(f"Cannot read the {what} {path}: {exc.strerror or exc}.") from None
    except (ValueError, csv.Error) as exc:
        raise error(f"The {what} {path} is not a UTF-8 CSV file ({str(exc)[:120]}); restore it "
                    "from the run that wrote it.") from None
    if "index" not in header:
        raise error(f"The {what} {path} has no 'index' column; expected "
                    f"{','.join(INDEX_COLUMNS)} rows as medunlearn writes them.")
    return rows


def read_indices(path: str | os.PathLike, *, what: str = "forget list",
                 error: type[MedUnlearnError] = ForgetSetError) -> list[int]:
    """The ``index`` column of an index CSV, in file order (no data needed).

    Raises:
        ``error``: unreadable file, no ``index`` column, or an entry that is not a whole number.
    """
    rows = _index_rows(path, what=what, error=error)
    out = []
    for line, row in enumerate(rows, start=2):
        try:
            out.append(int(row["index"]))
        except (TypeError, ValueError):
            raise error(f"{path} line {line}: index {row['index']!r} is not a whole number; "
                        f"the {what} is damaged.") from None
    return out


def read_checked_indices(path: str | os.PathLike, dataset: Dataset, *,
                         what: str = "forget set") -> np.ndarray:
    """Training-split indices of an index CSV (sorted, unique), each checked against the data:
    in range, and with the image's SHA-256 when the file records one.

    Raises:
        ForgetSetError: unreadable file, no ``index`` column, out-of-range indices, or hashes
            that do not match (the run folder was made with other data).
    """
    rows = _index_rows(path, what=f"{what} file")
    n = len(dataset.train)
    hashes = dataset.train.hashes
    idx = []
    for line, row in enumerate(rows, start=2):
        try:
            i = int(row["index"])
        except (TypeError, ValueError):
            raise ForgetSetError(f"{path} line {line}: index {row['index']!r} is not an "
                                 "integer.") from None
        if not 0 <= i < n:
            raise ForgetSetError(f"{path} line {line}: index {i} is outside the training split "
                                 f"(0..{n - 1}). The file belongs to other data.")
        h = (row.get("sha256") or "").strip().lower()
        if h and h != hashes[i]:
            raise ForgetSetError(
                f"{path} line {line}: training image {i} has SHA-256 {hashes[i][:12]}..., the "
                f"{what} says {h[:12]}.... The run folder was made with different data (another "
                "file version, train_limit or seed); evaluate it on the data it was trained on."
            )
        idx.append(i)
    return np.unique(np.asarray(idx, dtype=np.int64))


def previously_forgotten(run_dir: str | os.PathLike) -> list[int]:
    """Training indices an unlearning run folder has already forgotten: its ``forget.csv`` plus
    the ``excluded.csv`` it inherited (empty for a ``train`` run)."""
    run_dir = Path(run_dir)
    out: set[int] = set()
    for name in (FORGET_FILE, EXCLUDED_FILE):
        if (run_dir / name).is_file():
            out.update(read_indices(run_dir / name))
    return sorted(out)


# --------------------------------------------------------------------------- sharded runs
# A sharded run folder (``medunlearn train --shards S``) also holds ``shards.csv`` (the shard and
# slice of every training image: an index CSV) and ``shards/shard-<s>/slice-<r>.safetensors``
# (each shard's checkpoint after each slice); its ``config.json`` has a ``shards`` section.


def checkpoint_name(shard: int, stage: int) -> str:
    """Path of shard ``shard``'s checkpoint after slice ``stage + 1``, inside a run folder."""
    return f"{SHARDS_DIR}/shard-{shard}/slice-{stage + 1}.safetensors"


def write_assignment_csv(path: str | os.PathLike, state: ShardState) -> Path:
    """``index,sha256,label,patient_id,group,shard,slice`` of every training image (slices
    numbered from 1): an index CSV, written atomically."""
    a = state.assignment
    return write_index_rows(path, ASSIGNMENT_COLUMNS, (
        [i, a.hashes[i], int(a.labels[i]), a.patients[i], a.groups[i], int(a.shard[i]),
         int(a.slice[i]) + 1] for i in range(len(a))))


def read_assignment_csv(path: Path, *, shards: int, slices: int, seed: int) -> Assignment:
    """Read a run's ``shards.csv``.

    Raises:
        CheckpointError: unreadable, wrong columns, or values out of range.
    """
    try:
        header, rows = read_index_rows(path)
        if not rows or tuple(header) != ASSIGNMENT_COLUMNS:
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
    except (OSError, csv.Error, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a valid shard assignment ({str(exc)[:160]}). "
                              "Restore it from the run, or train the sharded model again.") \
            from None


def model_for_config(config: dict) -> torch.nn.Module:
    """An untrained model of a run's architecture: a Classifier, or for a sharded run
    (``config["shards"]``) an ensemble of ``count`` of them."""
    section = config["shards"] if "shards" in config else None
    if section is None:
        return model_from_spec(config["model"])
    count = check_count(section["count"], "shards.count")
    return EnsembleClassifier([model_from_spec(config["model"]) for _ in range(count)])


def attach_shard_state(model: torch.nn.Module, path: Path, config: dict) -> None:
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
        raise CheckpointError(f"{path / CONFIG_FILE} has an invalid 'shards' section "
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
    # the constituents' own recipe (shard_recipe); folders written before it was recorded
    # trained the constituents with the run's recipe
    recipe, where = section.get("recipe"), "config.json shards.recipe"
    if recipe is None:
        recipe, where = config.get("train"), "config.json train"
    if isinstance(recipe, dict):
        try:
            recipe = from_dict(TrainConfig, recipe, where=where)
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
    else:
        recipe = None
    model.shards = ShardState(assignment, dict(config["model"]), *state_fields, checkpoints,
                              recipe)


def save_shard_files(folder: str | os.PathLike, model: torch.nn.Module, *,
                     num_classes: int) -> dict | None:
    """Write a sharded model's assignment and slice checkpoints into a run folder being built,
    and return the ``config.json`` ``shards`` section (None for a monolithic model).

    Checkpoints are written only when they describe the model's weights (an approximate method
    that changed the weights leaves none behind: they hold what the method tried to forget, and
    only ``retrain`` can restore exactness then); their SHA-256 are recorded in the section.
    """
    state = getattr(model, "shards", None) if is_ensemble(model) else None
    if state is None:
        return None
    folder = Path(folder)
    written = write_assignment_csv(folder / ASSIGNMENT_FILE, state)
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
        "assignment": ASSIGNMENT_FILE, "assignment_sha256": sha256_file(written),
        "groups": len(set(state.assignment.groups.tolist())),
        "images": counts.sum(1).tolist(), "class_counts": counts.tolist(),
        "excluded": sorted(state.excluded), "checkpoints": digests,
        "exact": exact,
        "recipe": dataclasses.asdict(state.recipe) if state.recipe is not None else None,
    }


def finished_run_metrics(out: str | os.PathLike, key: str) -> dict | None:
    """Metrics of the finished run in ``out`` if its config fingerprint is ``key``, else None.

    Run folders appear only when complete (staged_output), so a matching fingerprint means the
    same run has already been done and need not be repeated.
    """
    out = Path(out)
    try:
        if read_json(out / CONFIG_FILE).get("fingerprint") == key:
            return read_json(out / METRICS_FILE)
    except (OSError, ValueError, AttributeError):
        pass
    return None


__all__ = [
    "ASSIGNMENT_COLUMNS", "ASSIGNMENT_FILE", "SHARDS_DIR", "attach_shard_state",
    "checkpoint_name", "model_for_config", "read_assignment_csv", "save_shard_files",
    "write_assignment_csv",
    "CONFIG_FILE", "CURVE_FILE", "EVALUATION_FILE", "EXCLUDED_FILE", "FORGET_FILE",
    "HISTORY_FILE", "INDEX_COLUMNS", "MANIFEST_FILE", "METRICS_FILE", "MODEL_FILE", "Run",
    "check_compatible", "finished_run_metrics", "load_run",
    "load_run_and_data", "load_weights", "previously_forgotten", "read_checked_indices",
    "read_index_rows", "read_indices", "save_weights", "write_index_csv", "write_index_rows",
]

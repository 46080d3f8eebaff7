"""Saving and loading run folders.

A run folder (from ``train``, ``unlearn`` or anything else that produces a model) holds:

* ``model.safetensors``: the weights (loaded without pickle),
* ``config.json``: the resolved configuration, seed, data description, code version, and the
  ``model`` spec needed to rebuild the network,
* ``metrics.json``: results and timings.

Every command that takes a model takes such a folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from medunlearn.data import Dataset, load_from_record
from medunlearn.errors import CheckpointError, ConfigError
from medunlearn.io import atomic_write_bytes, read_json
from medunlearn.models import Classifier

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


def save_weights(path: str | os.PathLike, model: torch.nn.Module,
                 metadata: dict | None = None) -> Path:
    """Write a model's state dict to ``path`` as safetensors, atomically and byte-reproducibly
    (the same weights and metadata always give the same file, so model hashes in certificates
    and checks agree for identical models)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "medunlearn"} | {k: str(v) for k, v in (metadata or {}).items()}
    return atomic_write_bytes(path, canonical_safetensors(save(state, metadata=meta)))


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header written with sorted keys.

    The writer serialises the header (tensor table and ``__metadata__``) from a hash map, so its
    key order, and with it the file's bytes, can change from one call to the next. A
    safetensors file is an 8-byte little-endian header length, the header (JSON, padded with
    spaces to a multiple of 8 bytes) and the tensor bytes, which the header addresses relative
    to their own start; rewriting the header leaves them valid.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


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

    def load_dataset(self, **overrides) -> Dataset:
        """Load the data this run was trained on (``overrides`` e.g. ``data_root=...``)."""
        dataset = load_from_record(self.data_record, seed=self.seed, **overrides)
        check_compatible(self, dataset)
        return dataset


def load_run(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Run:
    """Load a run folder: rebuild the model from its config and load its weights.

    Raises:
        CheckpointError: missing files, unreadable weights, or weights that do not match the
            architecture described in ``config.json``.
    """
    from medunlearn.sharding import attach_shard_state, model_for_config

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
        model = model_for_config(config)  # an ensemble for a sharded run (sharding.py)
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


def load_run_and_data(path: str | os.PathLike, *, data_root: str | None = None,
                      **overrides) -> tuple[Run, Dataset]:
    """Load a run folder and the dataset it was trained on, checked against each other."""
    run = load_run(path)
    if data_root:
        overrides["data_root"] = data_root
    return run, run.load_dataset(**overrides)

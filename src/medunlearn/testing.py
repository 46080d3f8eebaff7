"""Test helpers: synthetic MedMNIST-format files, and the registry's test doubles.

MedMNIST datasets other than the bundled ones cannot be downloaded on an offline machine, so tests
exercise those code paths with small files of the same layout (``{split}_images`` uint8
(N, H, W[, C]), ``{split}_labels`` uint8 (N, 1) or (N, L) for multi-label) whose classes are
learnable: each class has its own mean brightness pattern plus noise.

Registry tests use fast stand-ins for the two steps of a deletion request (:func:`fake_unlearn`,
:func:`fake_verify`, :func:`fake_steps`, :func:`fake_registry_steps`) and an untrained run folder
(:func:`untrained_run`). Production code never imports this module.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np


def synthetic_arrays(n: int, *, n_classes: int, n_channels: int = 1, size: int = 28,
                     multilabel: bool = False, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """``(images, labels)`` of ``n`` synthetic samples with a class-dependent signal."""
    protos = np.random.default_rng(1234).uniform(40, 215, size=(n_classes, size, size, n_channels))
    if multilabel:
        labels = (rng.random((n, n_classes)) < 0.3).astype(np.uint8)
        base = (labels[:, :, None, None, None] * protos[None]).sum(1) / np.maximum(
            labels.sum(1), 1)[:, None, None, None]
    else:
        y = rng.integers(0, n_classes, size=n)
        labels = y[:, None].astype(np.uint8)
        base = protos[y]
    imgs = np.clip(base + rng.normal(0, 35, size=base.shape), 0, 255).astype(np.uint8)
    if n_channels == 1:
        imgs = imgs[..., 0]
    return imgs, labels


def make_synthetic_npz(path: str | os.PathLike, *, n_classes: int, n_channels: int = 1,
                       size: int = 28, n_train: int = 120, n_val: int = 40, n_test: int = 40,
                       multilabel: bool = False, seed: int = 0) -> Path:
    """Write a small synthetic dataset in MedMNIST's npz layout and return its path."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        imgs, labels = synthetic_arrays(n, n_classes=n_classes, n_channels=n_channels, size=size,
                                        multilabel=multilabel, rng=rng)
        arrays[f"{split}_images"] = imgs
        arrays[f"{split}_labels"] = labels
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


# --------------------------------------------------------------------------- registry test doubles
#
# Fast stand-ins for the two steps of a deletion request (``medunlearn.registry.steps``). They are
# passed by argument (``process_request(..., unlearn=fake_unlearn, verify=fake_verify)``), or, for
# a command run in-process or in a child process, installed as the registry's default steps for
# the length of a ``with fake_registry_steps(...)`` block. Nothing in the registry reads them from
# the environment. Attempts made with them are recorded under their own names
# (``medunlearn.testing.fake_unlearn``), which ``audit verify`` and certificates flag as
# non-standard steps.


def fake_unlearn(model_dir: str | os.PathLike, *, method: str, forget: Sequence[int],
                 exclude: Sequence[int], out: str | os.PathLike, seed: int = 0,
                 data_root: str | None = None, delay: float = 0.0) -> dict:
    """A fast stand-in for the unlearn step: copies the model with new metadata (so a new
    weights hash).

    It writes a complete run folder through ``staged_output`` like the real step, and records
    the indices it was given in ``fake_call.json`` so tests can check what a retrain would see.
    ``delay`` seconds are spent before and after writing (concurrency tests).
    """
    from safetensors.numpy import load_file, save_file

    from medunlearn.errors import ConfigError
    from medunlearn.fileio import atomic_write_json, staged_output
    from medunlearn.registry import store

    model_dir = Path(model_dir)
    forget, exclude = sorted(int(i) for i in forget), sorted(int(i) for i in exclude)
    overlap = set(forget) & set(exclude)
    if overlap:
        raise ConfigError(f"forget and exclude overlap: {sorted(overlap)[:5]}")
    _sleep(delay)
    with staged_output(out, what="unlearning run") as stage:
        tensors = load_file(str(model_dir / "model.safetensors"))
        save_file(tensors, str(stage / "model.safetensors"),
                  metadata={"format": "medunlearn", "fake_method": method,
                            "forget": json.dumps(forget)})
        config = json.loads((model_dir / "config.json").read_text())
        config.update(kind="unlearn", method={"name": method, "options": {}},
                      original={"path": str(model_dir)},
                      forget={"spec": "indices", "count": len(forget),
                              "excluded_count": len(exclude)})
        atomic_write_json(stage / "config.json", config)
        with open(stage / "forget.csv", "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["index"])
            w.writerows([i] for i in forget)
        atomic_write_json(stage / "fake_call.json", {"method": method, "forget": forget,
                                                     "exclude": exclude, "seed": seed})
        metrics = {"unlearn_seconds": 0.0, "steps": 0, "fake": True}
        atomic_write_json(stage / "metrics.json", metrics)
        store.stage("fake-unlearn-writing")  # a crash test can stop it with the folder half done
        _sleep(delay)
    return metrics


def fake_verify(run_dir: str | os.PathLike, *, original: str | os.PathLike,
                data_root: str | None = None, fail: Iterable[str] = (),
                delay: float = 0.0):
    """A fast stand-in for the gate step: passes every candidate except those unlearned with a
    method in ``fail`` (after ``delay`` seconds)."""
    from medunlearn.registry.steps import Verification

    _sleep(delay)
    method = json.loads((Path(run_dir) / "config.json").read_text())["method"]["name"]
    if method in set(fail):
        return Verification(False, [f"fake gate: {method} is configured to fail"],
                            [{"name": "fake", "status": "fail"}], {"fake": True})
    return Verification(True, [], [{"name": "fake", "status": "pass"}], {"fake": True})


def fake_steps(*, fail: Iterable[str] = (), delay: float = 0.0) -> dict[str, Callable]:
    """``{"unlearn": ..., "verify": ...}``: the fakes with their knobs set, for
    ``process_request(reg, request, **fake_steps(fail=["salun-cra"]))``. They keep the fakes'
    names, so the ledger records (and the audit flags) them as :func:`fake_unlearn` and
    :func:`fake_verify`."""
    fail = frozenset(fail)

    @functools.wraps(fake_unlearn)
    def unlearn(model_dir, **kw):
        return fake_unlearn(model_dir, **kw, delay=delay)

    @functools.wraps(fake_verify)
    def verify(run_dir, **kw):
        return fake_verify(run_dir, **kw, fail=fail, delay=delay)

    return {"unlearn": unlearn, "verify": verify}


@contextlib.contextmanager
def fake_registry_steps(*, fail: Iterable[str] = (), delay: float = 0.0) -> Iterator[None]:
    """Make :func:`fake_steps` the registry's default steps inside the block: for commands run
    in-process (``medunlearn.cli.main``) or in a child process (``tests/_registry_child.py``),
    which cannot pass steps by argument."""
    from medunlearn.registry import steps

    fakes = fake_steps(fail=fail, delay=delay)
    saved = steps.unlearn_candidate, steps.gate_candidate
    steps.unlearn_candidate, steps.gate_candidate = fakes["unlearn"], fakes["verify"]
    try:
        yield
    finally:
        steps.unlearn_candidate, steps.gate_candidate = saved


def _sleep(delay: float) -> None:
    if delay > 0:
        time.sleep(delay)


def untrained_run(out: str | os.PathLike, *, data_root: str | os.PathLike,
                  dataset: str = "breastmnist", train_limit: int = 120, eval_limit: int = 60,
                  width: int = 8, verify_md5: bool = True) -> Path:
    """A complete run folder (weights, config.json, manifest.csv) of a randomly initialised
    model: what registry tests need when their steps are fakes (no training). For files made by
    :func:`make_synthetic_npz`, pass ``verify_md5=False`` (recorded in the run's data config)."""
    from medunlearn.checkpoint import save_weights
    from medunlearn.config import DataConfig, ModelConfig
    from medunlearn.data import load_dataset
    from medunlearn.fileio import atomic_write_json
    from medunlearn.runs import write_manifest
    from medunlearn.training import build_for

    cfg = DataConfig(dataset=dataset, train_limit=train_limit, eval_limit=eval_limit,
                     data_root=str(data_root), verify_md5=verify_md5)
    data = load_dataset(cfg, seed=0)
    model, spec = build_for(data, ModelConfig(width=width))
    out = Path(out)
    out.mkdir(parents=True)
    save_weights(out / "model.safetensors", model)
    atomic_write_json(out / "config.json", {"kind": "train", "seed": 0, "data": cfg, "model": spec,
                                            "train": {}, "dataset": data.describe()})
    write_manifest(out / "manifest.csv", data)
    return out

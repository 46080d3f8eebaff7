"""Shared fixtures: real MedMNIST files from ../shared, synthetic files for the other datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medunlearn.testing import make_synthetic_npz

REPO = Path(__file__).resolve().parents[1]
SHARED_ROOT = REPO.parent / "shared" / "data" / "medmnist"


def real_root() -> Path | None:
    env = os.environ.get("MEDMNIST_ROOT")
    for cand in (Path(env) if env else None, SHARED_ROOT):
        if cand and (cand / "breastmnist.npz").is_file():
            return cand
    return None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the MD5 cache out of the user's home during tests."""
    monkeypatch.setenv("MEDUNLEARN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def medmnist_root() -> Path:
    root = real_root()
    if root is None:
        pytest.skip("the bundled MedMNIST files (../shared/data/medmnist) are not present")
    return root


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A data folder with small synthetic DermaMNIST, PathMNIST, ChestMNIST and BreastMNIST."""
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_npz(root / "dermamnist.npz", n_classes=7, n_channels=3, seed=1)
    make_synthetic_npz(root / "pathmnist.npz", n_classes=9, n_channels=3, seed=2)
    make_synthetic_npz(root / "chestmnist.npz", n_classes=14, multilabel=True, seed=3)
    make_synthetic_npz(root / "breastmnist.npz", n_classes=2, n_train=160, seed=4)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, synth_root) -> Path:
    """An untrained (randomly initialised) but complete run folder on synthetic BreastMNIST
    files: for tests of the workflow around a model (the registry's fake steps need no trained
    model, nor the real data)."""
    from medunlearn.checkpoint import save_weights
    from medunlearn.config import DataConfig, ModelConfig
    from medunlearn.data import load_dataset
    from medunlearn.fileio import atomic_write_json
    from medunlearn.runs import write_manifest
    from medunlearn.training import build_for

    cfg = DataConfig(dataset="breastmnist", train_limit=120, eval_limit=60,
                     data_root=str(synth_root), download=False, verify_md5=False)
    dataset = load_dataset(cfg, seed=0)
    model, spec = build_for(dataset, ModelConfig(width=8))
    out = tmp_path_factory.mktemp("model") / "model"
    out.mkdir()
    save_weights(out / "model.safetensors", model)
    atomic_write_json(out / "config.json", {"kind": "train", "seed": 0, "data": cfg,
                                            "model": spec, "train": {},
                                            "dataset": dataset.describe()})
    write_manifest(out / "manifest.csv", dataset)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, medmnist_root) -> Path:
    """A trained tiny BreastMNIST run folder (120 training images, one epoch): the model the
    registry tests register. Tests copy it (``init_registry``) and never change it."""
    from medunlearn.config import DataConfig, ModelConfig, TrainConfig
    from medunlearn.runs import run_training

    out = tmp_path_factory.mktemp("registry-model") / "model"
    run_training(DataConfig(dataset="breastmnist", train_limit=120, eval_limit=60,
                            data_root=str(medmnist_root)),
                 ModelConfig(width=8), TrainConfig(epochs=1, progress=False), seed=0, out=out)
    return out


@pytest.fixture(scope="session")
def manifest(tiny_model) -> list[str]:
    """The SHA-256 of every training image of ``tiny_model``, by training index."""
    import csv

    with open(tiny_model / "manifest.csv") as fh:
        return [r["sha256"] for r in csv.DictReader(fh)]

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

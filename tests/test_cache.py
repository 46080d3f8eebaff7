"""The job cache (medunlearn.cache): cached outputs equal computed ones, and a deletion request
verified with the registry's cache gives the verdict and metrics of an uncached evaluation."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from medunlearn import cache
from medunlearn.config import DataConfig, ModelConfig, TrainConfig
from medunlearn.data import from_arrays
from medunlearn.loop import infer
from medunlearn.models import build_model


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)

    def part(k):
        return {"images": torch.randint(0, 256, (k, 1, 28, 28), generator=g, dtype=torch.uint8),
                "labels": torch.randint(0, 2, (k,), generator=g)}

    return from_arrays({"train": part(n), "val": part(16), "test": part(16)})


def _model():
    torch.manual_seed(0)
    return build_model("resnet18", width=4, in_channels=1, num_classes=2, size=28).eval()


def test_cached_outputs_equal_computed_and_are_reused():
    data, model = _data(), _model()
    idx = np.array([3, 1, 7, 1, 40])  # order kept, a repeated index included
    lo0, fe0 = infer(model, data.train, idx, features=True)
    with cache.session() as s:
        lo1, fe1 = infer(model, data.train, idx, features=True)
        assert s.misses == 4 and s.hits == 1  # the repeated image is computed once
        lo2, _ = infer(model, data.train, idx)
        assert s.misses == 4 and s.hits == 6
        full, _ = infer(model, data.train)  # the rest of the split is computed, not the five
        assert s.misses == len(data.train)
    np.testing.assert_allclose(lo1, lo0, atol=1e-5)
    np.testing.assert_allclose(fe1, fe0, atol=1e-5)
    np.testing.assert_array_equal(lo2, lo1)
    np.testing.assert_allclose(full[idx], lo0, atol=1e-5)
    assert cache.current() is None  # nothing is cached outside a session
    assert infer(model, data.train, idx)[0].shape == (5, 2)


def test_features_are_shared_by_models_that_differ_only_in_the_head():
    data, model = _data(), _model()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.weight.mul_(-2.0)
    body = copy.deepcopy(model)
    with torch.no_grad():
        next(body.backbone.parameters()).add_(0.1)
    assert cache.backbone_digest(other) == cache.backbone_digest(model)
    assert cache.backbone_digest(body) != cache.backbone_digest(model)
    want, _ = infer(other, data.test)
    with cache.session() as s:
        infer(model, data.test)
        got, _ = infer(other, data.test)  # head-only change: features reused, logits recomputed
        assert s.misses == len(data.test)
        infer(body, data.test)
        assert s.misses == 2 * len(data.test)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_saved_tables_survive_the_session_and_bad_files_are_ignored(tmp_path):
    data, model = _data(), _model()
    key = cache.feature_key(model, "cpu")
    with cache.session(tmp_path) as s:
        infer(model, data.val)
        assert cache.save_features(key) == tmp_path / f"{key}.npz"
    with cache.session(tmp_path) as s:
        infer(model, data.val)
        assert s.misses == 0 and s.hits == len(data.val)
    (tmp_path / f"{key}.npz").write_bytes(b"not an npz file")
    with cache.session(tmp_path) as s:
        infer(model, data.val)  # a damaged table is derived data: recomputed, no error
        assert s.misses == len(data.val)
    cache.prune(tmp_path, keep={"0" * 64})
    assert not list(tmp_path.glob("*.npz"))


def test_datasets_are_loaded_once_per_session(monkeypatch):
    from medunlearn.data import sources

    calls = []
    monkeypatch.setitem(sources._LOADERS, "probe", lambda record, seed=0, **kw: calls.append(
        record) or object())
    a = sources.load_from_record({"source": "probe", "x": 1})
    with cache.session():
        b = sources.load_from_record({"source": "probe", "x": 1})
        c = sources.load_from_record({"source": "probe", "x": 1})
        sources.load_from_record({"source": "probe", "x": 2})
    assert a is not b and b is c and len(calls) == 3


def test_retain_subset_is_stable_when_images_are_forgotten():
    from medunlearn.evaluation.record import retain_subset

    retain = np.arange(1000)
    a = retain_subset(retain, 100, seed=0, n_train=1000)
    gone = a[:3]
    b = retain_subset(np.setdiff1d(retain, gone), 100, seed=0, n_train=1000)
    assert len(a) == len(b) == 100 and len(np.intersect1d(a, b)) == 97
    assert np.array_equal(retain_subset(retain[:50], 100, seed=0, n_train=1000), retain[:50])


@pytest.mark.integration
def test_a_cached_request_is_verified_as_an_uncached_evaluation(tmp_path, medmnist_root):
    from medunlearn.registry import forget, init_registry
    from medunlearn.registry.steps import REQUEST_OPTIONS, VERIFY_OPTIONS
    from medunlearn.runs import run_training
    from medunlearn.runs.evaluate import evaluate_run

    model = tmp_path / "model"
    run_training(DataConfig(dataset="breastmnist", train_limit=120, eval_limit=60,
                            data_root=str(medmnist_root)),
                 ModelConfig(width=8), TrainConfig(epochs=1, progress=False), seed=0, out=model)
    reg = tmp_path / "reg"
    init_registry(model, reg, data_root=str(medmnist_root), methods=["newton", "retrain"])
    assert len(list((reg / "cache").glob("*.npz"))) == 1  # warmed at init
    with open(model / "manifest.csv") as fh:
        hashes = [r["sha256"] for r in csv.DictReader(fh)]
    r = forget(reg, {"id": "R-1", "subject": "p", "images": hashes[5:8]})
    assert r["status"] == "completed" and r["method"] == "newton"
    cfg = json.loads((reg / "versions" / "2" / "config.json").read_text())
    assert cfg["method"]["user_options"] == REQUEST_OPTIONS["newton"]
    tables = list((reg / "cache").glob("*.npz"))
    assert len(tables) == 1  # only the active version's backbone is kept
    from medunlearn.registry.db import connect

    conn = connect(reg)
    try:
        row = conn.execute("SELECT summary FROM attempts WHERE request_id = 'R-1'").fetchone()
    finally:
        conn.close()
    cached = json.loads(row["summary"])["metrics"]
    fresh = evaluate_run(reg / "versions" / "2", original=reg / "versions" / "1",
                         data_root=str(medmnist_root), options=VERIFY_OPTIONS)
    assert cache.current() is None
    for role in ("model", "original"):
        for section in ("utility", "clinical", "privacy", "representation"):
            _close(cached["models"][role].get(section), fresh["models"][role].get(section),
                   f"{role}.{section}")
    from medunlearn.evaluation.gate import gate

    assert gate(cached).passed == gate(fresh).passed


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and bool(np.isnan(v)))


def _close(a, b, path="") -> None:
    if _missing(a) and _missing(b):  # the stored record went through JSON: NaN is null there
        return
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) and isinstance(b, float):
        assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-4, (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_same_source_file_preprocessed_differently_is_not_a_hit():
    """A file source names an image by its file's hash; the cache keys what the network saw, so
    the same files at another size (or channels, windowing) are computed again."""
    data, model = _data(), _model()
    small = data.test
    big = dataclasses.replace(small, images=torch.nn.functional.interpolate(
        small.images.float(), size=(32, 32)).to(torch.uint8), _hashes=list(small.hashes),
        _pixel_hashes=None)
    assert big.hashes == small.hashes  # the same "files"
    with cache.session() as s:
        infer(model, small)
        lo, _ = infer(model, big)
        assert s.misses == 2 * len(small)
    np.testing.assert_allclose(lo, _infer_plain(model, big), atol=1e-5)


def _infer_plain(model, split):
    return infer(model, split)[0]

"""The job cache (medunlearn.cache): cached outputs equal computed ones, a saved table is read
back only when vouched for and well formed, and a deletion request verified with the registry's
cache gives the verdict and metrics of an uncached evaluation (also when the cache is poisoned)."""

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
from medunlearn.loop import infer, model_parts
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
    s = cache.Session()
    lo1, fe1 = infer(model, data.train, idx, features=True, cache=s)
    assert s.misses == 4 and s.hits == 1  # the repeated image is computed once
    lo2, _ = infer(model, data.train, idx, cache=s)
    assert s.misses == 4 and s.hits == 6
    full, _ = infer(model, data.train, cache=s)  # the rest of the split, not the five again
    assert s.misses == len(data.train)
    np.testing.assert_allclose(lo1, lo0, atol=1e-5)
    np.testing.assert_allclose(fe1, fe0, atol=1e-5)
    np.testing.assert_array_equal(lo2, lo1)
    np.testing.assert_allclose(full[idx], lo0, atol=1e-5)
    assert infer(model, data.train, idx)[0].shape == (5, 2)


def test_features_are_shared_by_models_that_differ_only_in_the_head():
    data, model = _data(), _model()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.weight.mul_(-2.0)
    body = copy.deepcopy(model)
    with torch.no_grad():
        next(body.backbone.parameters()).add_(0.1)
    assert _digest(other) == _digest(model)
    assert _digest(body) != _digest(model)
    want, _ = infer(other, data.test)
    s = cache.Session()
    infer(model, data.test, cache=s)
    got, _ = infer(other, data.test, cache=s)  # head-only change: features reused
    assert s.misses == len(data.test)
    infer(body, data.test, cache=s)
    assert s.misses == 2 * len(data.test)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _digest(model):
    return cache.backbone_digest(model, model_parts(model)[1])


def _key(model):
    return cache.feature_key(model, "cpu", model_parts(model)[1])


def test_saved_tables_are_read_back_only_when_vouched_for(tmp_path):
    data, model = _data(), _model()
    key = _key(model)
    s = cache.Session(tmp_path)
    infer(model, data.val, cache=s)
    path, sha, rows = cache.save_features(s, key)
    assert path == tmp_path / f"{key}.npz" and rows == len(data.val)
    s = cache.Session(tmp_path)  # nothing vouches for the file: it is not read
    infer(model, data.val, cache=s)
    assert s.misses == len(data.val) and s.rejected == {path.name: "not vouched for"}
    s = cache.Session(tmp_path, trusted={path.name: sha})
    infer(model, data.val, cache=s)
    assert s.misses == 0 and s.disk_hits == len(data.val) and s.loaded == {path.name: sha}
    cache.prune(tmp_path, keep=set())
    assert not list(tmp_path.glob("*.npz"))


def _write_table(path, hashes, features):
    import io

    buf = io.BytesIO()
    np.savez(buf, hashes=np.array(hashes, dtype="U64"), features=features)
    path.write_bytes(buf.getvalue())
    return __import__("hashlib").sha256(buf.getvalue()).hexdigest()


@pytest.mark.parametrize("damage", ["zeros", "bytes", "float64", "nan", "width", "hashes"])
def test_a_changed_or_malformed_table_is_never_used(tmp_path, damage):
    """A table whose bytes differ from what was vouched for (well-formed poisoned rows
    included) is ignored; so is a vouched-for table that is malformed (wrong dtype, NaN, wrong
    width, bad hashes). Either way the outputs are the computed ones."""
    data, model = _data(), _model()
    key, want = _key(model), infer(model, data.val)[0]
    s = cache.Session(tmp_path)
    infer(model, data.val, cache=s)
    path, sha, _ = cache.save_features(s, key)
    with np.load(path) as z:
        hashes, fe = list(z["hashes"]), z["features"]
    if damage == "zeros":  # well formed, other values: the hash no longer matches
        _write_table(path, hashes, np.zeros_like(fe))
    elif damage == "bytes":
        path.write_bytes(b"not an npz file")
    else:
        bad = {"float64": (hashes, fe.astype(np.float64)),
               "nan": (hashes, np.where(np.arange(fe.shape[1]) == 0, np.nan, fe)),
               "width": (hashes, fe[:, :-1]),
               "hashes": (["x" * 64] + hashes[1:], fe)}[damage]
        sha = _write_table(path, *bad)  # vouched for, but not a table the cache writes
    s = cache.Session(tmp_path, trusted={path.name: sha})
    got, _ = infer(model, data.val, cache=s)
    assert s.misses == len(data.val) and s.disk_hits == 0 and path.name in s.rejected
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_saving_leaves_out_dropped_images(tmp_path):
    data, model = _data(), _model()
    s = cache.Session(tmp_path)
    infer(model, data.val, cache=s)
    gone = set(data.val.pixel_hashes[:3])
    path, _, rows = cache.save_features(s, _key(model), drop=gone)
    with np.load(path) as z:
        assert rows == len(data.val) - 3 and not gone & {str(h) for h in z["hashes"]}


def test_datasets_are_loaded_once_per_session(monkeypatch):
    from medunlearn.data import sources

    calls = []
    monkeypatch.setitem(sources._LOADERS, "probe", lambda record, seed=0, **kw: calls.append(
        record) or object())
    a = sources.load_from_record({"source": "probe", "x": 1})
    s = cache.Session()
    b = sources.load_from_record({"source": "probe", "x": 1}, cache=s)
    c = sources.load_from_record({"source": "probe", "x": 1}, cache=s)
    sources.load_from_record({"source": "probe", "x": 2}, cache=s)
    assert a is not b and b is c and len(calls) == 3


def test_retain_subset_is_stable_when_images_are_forgotten():
    from medunlearn.evaluation.record import retain_subset

    retain = np.arange(1000)
    a = retain_subset(retain, 100, seed=0, n_train=1000)
    gone = a[:3]
    b = retain_subset(np.setdiff1d(retain, gone), 100, seed=0, n_train=1000)
    assert len(a) == len(b) == 100 and len(np.intersect1d(a, b)) == 97
    assert np.array_equal(retain_subset(retain[:50], 100, seed=0, n_train=1000), retain[:50])


def _summary(reg, rid):
    from medunlearn.registry.db import connect

    conn = connect(reg)
    try:
        rows = conn.execute("SELECT summary FROM attempts WHERE request_id = ? ORDER BY n",
                            (rid,)).fetchall()
    finally:
        conn.close()
    return [json.loads(r["summary"]) for r in rows]


def _check_like_uncached(reg, rid, new, old, root):
    """The attempt's recorded metrics and verdict equal an uncached evaluation's."""
    from medunlearn.evaluation.gate import gate
    from medunlearn.registry.steps import VERIFY_OPTIONS
    from medunlearn.runs import evaluate_run

    cached = _summary(reg, rid)[-1]["metrics"]
    fresh = evaluate_run(reg / "versions" / str(new), original=reg / "versions" / str(old),
                         data_root=str(root), options=VERIFY_OPTIONS)
    for role in ("model", "original"):
        for section in ("utility", "clinical", "privacy", "representation"):
            _close(cached["models"][role].get(section), fresh["models"][role].get(section),
                   f"{role}.{section}")
    assert gate(cached).passed == gate(fresh).passed


@pytest.mark.integration
def test_a_cached_request_is_verified_as_an_uncached_evaluation(tmp_path, medmnist_root):
    """Also after the cache was poisoned with well-formed rows (zeros: the attack that made
    every check pass) or replaced by a malformed table: the table is not used, the verdict is
    the uncached one, and the attempt records that no cached features were used."""
    from medunlearn.registry import audit_registry, forget, init_registry
    from medunlearn.registry.steps import REQUEST_OPTIONS
    from medunlearn.runs import run_training

    model = tmp_path / "model"
    run_training(DataConfig(dataset="breastmnist", train_limit=120, eval_limit=60,
                            data_root=str(medmnist_root)),
                 ModelConfig(width=8), TrainConfig(epochs=1, progress=False), seed=0, out=model)
    reg = tmp_path / "reg"
    # keep the superseded versions, so that the uncached evaluation can load them
    init_registry(model, reg, data_root=str(medmnist_root), methods=["newton", "retrain"],
                  keep_superseded=5)
    assert len(list((reg / "cache").glob("*.npz"))) == 1  # warmed at init
    with open(model / "manifest.csv") as fh:
        hashes = [r["sha256"] for r in csv.DictReader(fh)]
    r = forget(reg, {"id": "R-1", "subject": "p", "images": hashes[5:8]})
    assert r["status"] == "completed" and r["method"] == "newton"
    cfg = json.loads((reg / "versions" / "2" / "config.json").read_text())
    assert cfg["method"]["user_options"] == REQUEST_OPTIONS["newton"]
    tables = list((reg / "cache").glob("*.npz"))
    assert len(tables) == 1  # only the active version's backbone is kept
    used = _summary(reg, "R-1")[0]["features"]
    assert used["cached"] and used["disk_hits"] > 0 and len(used["tables"]) == 1
    _check_like_uncached(reg, "R-1", 2, 1, medmnist_root)

    # poison every row of the vouched-for table with well-formed zeros
    with np.load(tables[0]) as z:
        names, fe = list(z["hashes"]), z["features"]
    _write_table(tables[0], names, np.zeros_like(fe))
    r = forget(reg, {"id": "R-2", "subject": "q", "images": hashes[20:22]})
    assert r["status"] == "completed"
    used = _summary(reg, "R-2")[-1]["features"]
    assert not used["cached"] and used["disk_hits"] == 0
    assert "SHA-256" in used["rejected"][tables[0].name]
    _check_like_uncached(reg, "R-2", 3, 2, medmnist_root)

    # the cache's own errors: a malformed table is recomputed, never a failed attempt
    for k, bad in enumerate((fe.astype(np.float64), fe[:, :-1], np.full_like(fe, np.nan))):
        table = next((reg / "cache").glob("*.npz"))
        _write_table(table, names, bad)
        r = forget(reg, {"id": f"R-{3 + k}", "subject": "s",
                         "images": hashes[30 + 2 * k:32 + 2 * k]})
        # the gate may refuse a method on its merits, but no attempt fails on the table
        summaries = _summary(reg, f"R-{3 + k}")
        assert r["status"] == "completed" and not any("error" in a for a in summaries)
        assert summaries[0]["features"]["rejected"] and not summaries[0]["features"]["cached"]
    assert audit_registry(reg).ok


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
    s = cache.Session()
    infer(model, small, cache=s)
    lo, _ = infer(model, big, cache=s)
    assert s.misses == 2 * len(small)
    np.testing.assert_allclose(lo, _infer_plain(model, big), atol=1e-5)


def _infer_plain(model, split):
    return infer(model, split)[0]

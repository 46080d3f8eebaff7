"""Sharded training (SISA) and the exact ``sisa`` method, on tiny synthetic data."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

import medunlearn as mu
from medunlearn.checkpoint import load_run
from medunlearn.cli import main
from medunlearn.config import DataConfig, ModelConfig, TrainConfig
from medunlearn.errors import CheckpointError, ConfigError
from medunlearn.loop import infer, model_parts
from medunlearn.models.adapter import as_classifier
from medunlearn.models.ensemble import EnsembleClassifier
from medunlearn.runs import run_sharded_training, run_unlearning
from medunlearn.sharding import (
    MIN_SHARD_BATCH,
    assign_shards,
    bucket,
    shard_recipe,
    stage_epochs,
    stage_seed,
    train_sharded,
)
from medunlearn.training import build_for, seed_everything, train_model
from medunlearn.training import fit as fit_model

MODEL = ModelConfig(width=4)
TRAIN = TrainConfig(epochs=2, batch_size=16, progress=False, device="cpu")


def _arrays(n: int, seed: int, prefix: str, *, patients: bool = True):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2  # both classes, balanced
    rng.shuffle(y)
    x = rng.normal(0.35 + 0.3 * y[:, None, None], 0.12, (n, 12, 12)).clip(0, 1)
    part = {"images": x.astype("float32"), "labels": y}
    if patients:
        part["patient_ids"] = [f"{prefix}{i // 2:03d}" for i in range(n)]  # 2 images each
    return part


def tiny(n: int = 96, *, drop: tuple[str, ...] = (), patients: bool = True, copy: bool = True):
    """Synthetic data: patients with two images of one label... except that image 90 (patient
    P045) is a byte-identical copy of image 2 (patient P001), which joins the two patients."""
    train = _arrays(n, 0, "P", patients=patients)
    if copy:
        train["images"][90] = train["images"][2]
        train["labels"][90] = train["labels"][2]
    if drop:
        keep = [i for i, p in enumerate(train["patient_ids"]) if p not in drop]
        train = {"images": train["images"][keep], "labels": train["labels"][keep],
                 "patient_ids": [train["patient_ids"][i] for i in keep]}
    return mu.from_arrays({"train": train, "val": _arrays(32, 1, "V", patients=patients),
                           "test": _arrays(32, 2, "T", patients=patients)}, name="tiny")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- assignment -----------------------------------------------------------------------------------
def test_patients_and_copies_stay_together_and_counts_add_up():
    data = tiny()
    a = assign_shards(data, shards=3, slices=2, seed=0)
    pids = data.train.patient_ids
    for p in set(pids.tolist()):
        rows = np.flatnonzero(pids == p)
        assert len(set(a.shard[rows].tolist())) == 1 and len(set(a.slice[rows].tolist())) == 1
    # the copy joins P001 and P045: one group, one shard, one slice
    assert a.groups[2] == a.groups[90] == "patient:P001"
    assert a.shard[90] == a.shard[2] and a.shard[91] == a.shard[2]  # P045's other image too
    counts = a.class_counts(2)
    assert counts.sum() == len(data.train) and (counts > 0).all()
    assert counts.sum(0).tolist() == np.bincount(data.train.labels.numpy()).tolist()


def test_assignment_is_stable_when_patients_are_removed():
    data = tiny()
    removed = ("P003", "P010", "P011", "P030")
    smaller = tiny(drop=removed)
    for shards, slices in ((2, 1), (4, 3)):
        full = assign_shards(data, shards=shards, slices=slices, seed=5)
        part = assign_shards(smaller, shards=shards, slices=slices, seed=5)
        where = {(p, h): (s, r) for p, h, s, r in zip(data.train.patient_ids, data.train.hashes,
                                                        full.shard, full.slice, strict=True)}
        for p, h, s, r in zip(smaller.train.patient_ids, smaller.train.hashes, part.shard,
                              part.slice, strict=True):
            assert where[(p, h)] == (s, r)


def test_assignment_without_patient_ids_groups_identical_images():
    data = tiny(patients=False)
    a = assign_shards(data, shards=4, seed=1)
    assert a.groups[2] == a.groups[90] == "sha256:" + data.train.hashes[2]
    assert a.shard[2] == a.shard[90]
    assert len(set(a.groups.tolist())) == len(data.train) - 1


def test_shard_buckets_nest_and_seeds_are_pure():
    keys = [f"patient:{i}" for i in range(200)]
    for k in keys:
        assert bucket(3, "shard", k, 8) // 2 == bucket(3, "shard", k, 4)
    assert stage_seed(7, 0, 0) == 7  # S = R = 1 is the monolithic seed
    seeds = {stage_seed(7, s, r) for s in range(4) for r in range(4)}
    assert len(seeds) == 16 and stage_seed(7, 2, 1) == stage_seed(7, 2, 1)
    assert stage_epochs(10, 1) == [10] and stage_epochs(10, 4) == [4, 4, 4, 4]
    assert stage_epochs(1, 4) == [1, 1, 1, 1]


@pytest.mark.parametrize("kwargs,message", [
    ({"shards": 0}, "at least 1"),
    ({"shards": 2, "slices": 0}, "--slices must be at least 1"),
    ({"shards": 2.5}, "whole number"),
    ({"shards": 2, "slices": "3"}, "whole number"),
    ({"shards": True}, "whole number"),
    ({"shards": 48}, r"more than the 47 patients \(those sharing an identical image"),
])
def test_bad_shard_counts(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        assign_shards(tiny(), **kwargs)


def test_more_shards_than_images_of_a_class_or_a_shard_without_a_class():
    rare = tiny()
    labels = np.zeros(len(rare.train), dtype=np.int64)
    labels[[0, 1, 2, 3, 90, 91]] = 1  # P000, P001, P045: 6 images of class 1
    few = mu.from_arrays({"train": {"images": rare.train.images, "labels": labels,
                                    "patient_ids": rare.train.patient_ids},
                          "val": _arrays(8, 1, "V"), "test": _arrays(8, 2, "T")})
    with pytest.raises(ConfigError, match="more than the 6 training images of class 1"):
        assign_shards(few, shards=7)
    # 6 images in 3 groups: some of 5 shards must miss class 1
    with pytest.raises(ConfigError, match="receives no training image of class 1"):
        assign_shards(few, shards=5)


# -- the ensemble ---------------------------------------------------------------------------------
def test_ensemble_output_is_the_log_of_the_mean_probability():
    data = tiny()
    fit = train_sharded(data, MODEL, TRAIN, seed=0, shards=3)
    model = fit.model.eval()
    x = data.test.images[:10].float() / 255
    with torch.no_grad():
        probs = torch.stack([m(x).softmax(1) for m in model.members]).mean(0)
        out = model(x)
        assert torch.allclose(out.softmax(1), probs, atol=1e-6)
        assert torch.allclose(out.exp().sum(1), torch.ones(10), atol=1e-5)
        feats = model.features(x)
        assert feats.shape == (10, 3 * model.members[0].head.in_features)
        assert torch.allclose(model.head(feats), out, atol=1e-6)
    features, head = model_parts(model)
    assert head is model.head and as_classifier(model) is model
    logits, fe = infer(model, data.test, features=True)
    assert np.allclose(torch.from_numpy(logits).softmax(1).numpy(),
                       np.stack([torch.from_numpy(infer(m, data.test)[0]).softmax(1).numpy()
                                 for m in model.members]).mean(0), atol=1e-5)
    # the state dict stores each constituent once, under its index
    assert all(k.startswith("members.") for k in model.state_dict())
    assert len(list(model.head.parameters())) == 6  # 3 heads x (weight, bias)


# -- training -------------------------------------------------------------------------------------
def test_one_shard_is_todays_training_bit_for_bit():
    data = tiny()
    sharded = train_sharded(data, MODEL, TRAIN, seed=3, shards=1, slices=1)
    mono, _ = train_model(data, MODEL, TRAIN, seed=3)
    assert _same_weights(sharded.model.members[0], mono.model)


def test_shard_recipe_keeps_the_steps_per_epoch_and_one_shard_unchanged():
    base = TrainConfig(batch_size=128, select="val_auc", progress=False)
    assert shard_recipe(base, 1) is base  # S = 1: today's recipe, nothing replaced
    four = shard_recipe(base, 4)
    assert (four.batch_size, four.select) == (32, "last")
    assert dataclasses.replace(four, batch_size=128, select="val_auc") == base
    assert shard_recipe(base, 3).batch_size == 43  # round(128 / 3)
    assert shard_recipe(base, 16).batch_size == MIN_SHARD_BATCH == 16  # floor
    assert shard_recipe(dataclasses.replace(base, batch_size=8), 2).batch_size == 8  # never > B


def test_constituents_train_with_the_shard_recipe_and_it_is_recorded():
    data = tiny()
    recipe = dataclasses.replace(TRAIN, batch_size=32)
    fit = train_sharded(data, MODEL, recipe, seed=0, shards=2)
    assert fit.model.shards.recipe == shard_recipe(recipe, 2)
    assert fit.model.shards.recipe.batch_size == 16
    for s in range(2):
        n = len(fit.model.shards.assignment.indices(s, 0))
        stage = fit.shards[s]["stages"][0]
        assert stage["steps"] == 2 * (n // 16)  # 2 epochs of n // 16 full batches
        assert stage["best_epoch"] == 2  # the last epoch, without validation
        assert all("val_auc" not in row for row in stage["history"])


def test_training_without_validation_gives_the_same_weights():
    data = tiny()
    last = dataclasses.replace(TRAIN, select="last")
    models = []
    for validate in (True, False):
        seed_everything(4)
        res = fit_model(build_for(data, MODEL)[0], data, None, last, seed=4, validate=validate)
        models.append(res.model)
        assert ("val_auc" in res.history[0]) == validate
    assert _same_weights(*models)
    with pytest.raises(ConfigError, match="select='last'"):
        fit_model(models[0], data, None, TRAIN, seed=0, validate=False)


def test_slices_checkpoint_after_each_slice_and_stages_are_pure():
    data = tiny()
    fit = train_sharded(data, MODEL, TRAIN, seed=0, shards=2, slices=3)
    state = fit.model.shards
    assert [len(row) for row in state.checkpoints] == [3, 3]
    assert state.epochs == (1, 1, 1)  # round(2 * 2 / 4)
    for s in range(2):
        assert [st["images"] for st in fit.shards[s]["stages"]] == \
            [len(state.assignment.indices(s, r)) for r in range(3)]
        assert _same_weights(fit.model.members[s], _member(state, s))
    again = train_sharded(data, MODEL, TRAIN, seed=0, shards=2, slices=3)
    assert [c.sha256 for row in again.model.shards.checkpoints for c in row] == \
        [c.sha256 for row in state.checkpoints for c in row]


def _member(state, s):
    from medunlearn.training import model_from_spec

    m = model_from_spec(state.spec)
    m.load_state_dict(state.checkpoints[s][-1].state())
    return m


# -- sisa -----------------------------------------------------------------------------------------
def _digests(model):
    return [[c.sha256 for c in row] for row in model.shards.checkpoints]


def test_sisa_equals_retrain_and_keeps_untouched_shards():
    data = tiny()
    fit = train_sharded(data, MODEL, TRAIN, seed=0, shards=4, slices=3)
    a = fit.model.shards.assignment
    # two patients in different shards, plus P001, whose copy is also P045's image
    people = ["P001"]
    for p in sorted(set(data.train.patient_ids.tolist())):
        s = a.shard[np.flatnonzero(data.train.patient_ids == p)[0]]
        if s not in {a.shard[2]} | {a.shard[np.flatnonzero(data.train.patient_ids == q)[0]]
                                     for q in people}:
            people.append(p)
        if len(people) == 3:
            break
    forget = {"patients": people}
    sisa = mu.unlearn(fit.model, data, forget=forget, method="sisa", train_config=TRAIN,
                      device="cpu")
    retrain = mu.unlearn(fit.model, data, forget=forget, method="retrain", train_config=TRAIN,
                         device="cpu")
    assert 90 in sisa.forget.tolist()  # the copy went too
    assert _same_weights(sisa.model, retrain.model)
    assert _digests(sisa.model) == _digests(retrain.model)
    hit = sorted({int(a.shard[i]) for i in sisa.forget})
    details = sisa.record["details"]
    assert details["retrained_shards"] == hit and len(hit) == 3
    assert list(details["shard_seconds"]) == [str(s) for s in hit]  # each retrained once
    for s in range(4):
        first = int(a.slice[[i for i in sisa.forget if a.shard[i] == s]].min()) if s in hit \
            else 3
        for r in range(3):  # checkpoints before the first affected slice are kept
            same = fit.model.shards.checkpoints[s][r].sha256 == \
                sisa.model.shards.checkpoints[s][r].sha256
            assert same == (r < first)
        if s not in hit:
            assert _same_weights(sisa.model.members[s], fit.model.members[s])
    assert sisa.model.shards.excluded == frozenset(sisa.forget.tolist())
    # a second request on the result: the same as retraining without both
    more = {"patients": [p for p in ("P020", "P021") if p not in people]}
    second = mu.unlearn(sisa.model, data, forget=more, method="sisa", train_config=TRAIN,
                        device="cpu", exclude=sisa.forget.tolist())
    both = sorted(set(sisa.forget.tolist()) | set(second.forget.tolist()))
    direct = mu.unlearn(fit.model, data, forget=both, method="retrain", train_config=TRAIN,
                        device="cpu")
    assert _same_weights(second.model, direct.model)
    assert _digests(second.model) == _digests(direct.model)


def test_a_forgotten_image_never_comes_back():
    data = tiny()
    fit = train_sharded(data, MODEL, TRAIN, seed=0, shards=2)
    first = mu.unlearn(fit.model, data, forget={"patients": ["P004"]}, method="sisa",
                       train_config=TRAIN, device="cpu")
    # the next request forgets to pass the earlier one as excluded: still left out
    second = mu.unlearn(first.model, data, forget={"patients": ["P007"]}, method="sisa",
                        train_config=TRAIN, device="cpu")
    both = mu.unlearn(fit.model, data, forget={"patients": ["P004", "P007"]}, method="retrain",
                      train_config=TRAIN, device="cpu")
    assert _same_weights(second.model, both.model)


def test_a_slice_left_without_images_keeps_its_start_weights():
    """Forget every patient of one shard's first slice: that stage has nothing to train on and
    keeps the seeded initial weights; sisa still equals retrain. Emptying a whole shard is
    refused."""
    from medunlearn.errors import ForgetSetError

    data = tiny()
    fit = train_sharded(data, MODEL, TRAIN, seed=0, shards=2, slices=3)
    a = fit.model.shards.assignment
    first = a.indices(0, 0).tolist()
    kw = {"train_config": TRAIN, "device": "cpu"}
    sisa = mu.unlearn(fit.model, data, forget=first, method="sisa", **kw)
    retrain = mu.unlearn(fit.model, data, forget=first, method="retrain", **kw)
    assert sisa.record["details"]["from_slice"] == {"0": 1}
    assert _same_weights(sisa.model, retrain.model)
    with pytest.raises(ForgetSetError, match="leave shard 0 .* with no training image"):
        mu.unlearn(fit.model, data, forget=a.indices(0, 2).tolist(), method="sisa", **kw)


def test_approximate_methods_drop_the_checkpoints_and_newton_refuses_naming_sisa():
    data = tiny()
    fit = train_sharded(data, MODEL, TRAIN, seed=0, shards=2)
    with pytest.raises(ConfigError, match="'sisa'"):
        mu.unlearn(fit.model, data, forget={"patients": ["P004"]}, method="newton",
                   options={"scope": "head"}, train_config=TRAIN, device="cpu")
    tuned = mu.unlearn(fit.model, data, forget={"patients": ["P004"]}, method="finetune",
                       options={"epochs": 1}, train_config=TRAIN, device="cpu")
    assert isinstance(tuned.model, EnsembleClassifier)
    assert tuned.model.shards.checkpoints is None  # they held what was to be forgotten
    assert fit.model.shards.checkpoints is not None  # the original keeps its own
    with pytest.raises(ConfigError, match="'retrain'"):
        mu.unlearn(tuned.model, data, forget={"patients": ["P007"]}, method="sisa",
                   train_config=TRAIN, device="cpu")
    exact = mu.unlearn(tuned.model, data, forget={"patients": ["P007"]}, method="retrain",
                       train_config=TRAIN, device="cpu", exclude=tuned.forget.tolist())
    assert exact.model.shards.checkpoints is not None
    with pytest.raises(ConfigError, match="sharded model"):
        mu.unlearn(train_model(data, MODEL, TRAIN, seed=0)[0].model, data,
                   forget={"patients": ["P004"]}, method="sisa", device="cpu")


# -- run folders ----------------------------------------------------------------------------------
def write_manifest(root, data) -> object:
    """The tiny data as PNG files and a CSV manifest (a source run folders can reload)."""
    from PIL import Image

    rows = ["path,label,patient_id,split"]
    for s in ("train", "val", "test"):
        sp = data.splits[s]
        for i in range(len(sp)):
            rel = f"img/{s}-{i}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(sp.images[i, 0].numpy(), "L").save(root / rel)
            rows.append(f"{rel},{int(sp.labels[i])},{sp.patient_ids[i]},{s}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    from medunlearn.data.manifest import load_manifest

    root = tmp_path_factory.mktemp("sharded")
    data = load_manifest(write_manifest(root / "data", tiny()), cache_dir=str(root / "cache"))
    out = root / "run"
    metrics = run_sharded_training(DataConfig(), MODEL, TRAIN, seed=0, out=out, shards=3,
                                   slices=2, dataset=data)
    return out, data, metrics


def test_sharded_run_folder_loads_and_records_everything(sharded_run):
    out, data, metrics = sharded_run
    run = load_run(out)
    assert isinstance(run.model, EnsembleClassifier) and len(run.model) == 3
    cfg = json.loads((out / "config.json").read_text())
    sec = cfg["shards"]
    assert (sec["count"], sec["slices"], sec["exact"]) == (3, 2, True)
    assert sec["recipe"] == dataclasses.asdict(shard_recipe(
        dataclasses.replace(TRAIN, epochs=cfg["train"]["epochs"]), 3))
    assert run.model.shards.recipe == shard_recipe(TRAIN, 3)
    assert len(sec["stage_seeds"]) == 3 and sec["stage_seeds"][0][0] == 0
    rows = (out / "shards.csv").read_text().splitlines()
    assert rows[0] == "index,sha256,label,patient_id,group,shard,slice"
    assert len(rows) == len(data.train) + 1
    counts = np.zeros((3, 2), dtype=int)
    for row in rows[1:]:
        f = row.split(",")
        counts[int(f[5]), int(f[2])] += 1
    assert counts.tolist() == sec["class_counts"]
    assert metrics["shards"]["members"][0]["class_counts"] == sec["class_counts"][0]
    for s in range(3):
        for r in (1, 2):
            assert (out / "shards" / f"shard-{s}" / f"slice-{r}.safetensors").is_file()
    state = run.model.shards
    assert state.describes(run.model)
    x = data.test.images[:5].float() / 255
    with torch.no_grad():
        assert torch.equal(run.model(x), load_run(out).model(x))


def test_sisa_and_retrain_run_folders_agree_byte_for_byte(sharded_run, tmp_path):
    out, data, _ = sharded_run
    (tmp_path / "p.txt").write_text("P005\nP040\n")
    common = {"forget": f"patients:{tmp_path / 'p.txt'}", "progress": False}
    run_unlearning(out, method="sisa", out=tmp_path / "sisa", **common)
    run_unlearning(out, method="retrain", out=tmp_path / "retrain", **common)
    run_unlearning(tmp_path / "sisa", method="sisa", forget=[60, 61], progress=False,
                   out=tmp_path / "chained")
    sec = json.loads((tmp_path / "sisa" / "config.json").read_text())["shards"]
    affected = sec and set(int(k) for k in
                           json.loads((tmp_path / "sisa" / "metrics.json").read_text())
                           ["details"]["from_slice"])
    for s in range(3):
        for r in (1, 2):
            name = f"shards/shard-{s}/slice-{r}.safetensors"
            sisa_b = (tmp_path / "sisa" / name).read_bytes()
            assert sisa_b == (tmp_path / "retrain" / name).read_bytes()
            if s not in affected:
                assert sisa_b == (out / name).read_bytes()
    assert _same_weights(load_run(tmp_path / "sisa").model, load_run(tmp_path / "retrain").model)
    chained = json.loads((tmp_path / "chained" / "config.json").read_text())["shards"]
    assert set(chained["excluded"]) >= {60, 61} | set(sec["excluded"])


def test_a_folder_missing_a_shard_or_a_checkpoint_is_refused(sharded_run, tmp_path, capsys):
    out, _, _ = sharded_run
    for victim, named in (("shards/shard-1/slice-2.safetensors", "slice-2.safetensors"),
                          ("shards/shard-2", "shards/shard-2/"), ("shards.csv", "shards.csv")):
        broken = tmp_path / victim.replace("/", "_")
        shutil.copytree(out, broken)
        target = broken / victim
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
            load_run(broken)
    assert main(["evaluate", "--model", str(broken), "--out", str(tmp_path / "e.json")]) == 2
    assert "shards.csv" in capsys.readouterr().err
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    ck = tampered / "shards" / "shard-0" / "slice-1.safetensors"
    ck.write_bytes((out / "shards" / "shard-1" / "slice-1.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_run(tampered).model.shards.checkpoints[0][0].read()


def test_cli_sharded_training_and_bad_input(synth_root, tmp_path, capsys):
    base = ["train", "--dataset", "breastmnist", "--data-root", str(synth_root), "--no-verify",
            "--no-download", "--epochs", "1", "--width", "4", "--quiet"]
    assert main([*base, "--shards", "2", "--slices", "2", "--out", str(tmp_path / "r")]) == 0
    assert "2 shards x 2 slice(s)" in capsys.readouterr().out
    assert isinstance(load_run(tmp_path / "r").model, EnsembleClassifier)
    for extra, message in ((["--shards", "2", "--slices", "0"], "--slices must be at least 1"),
                           (["--shards", "0"], "--shards must be at least 1"),
                           (["--slices", "2"], "add --shards"),
                           (["--shards", "2", "--backend", "spark"], "Unknown --backend"),
                           (["--shards", "500"], "more than the")):
        assert main([*base, *extra, "--out", str(tmp_path / "bad")]) == 2, extra
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
    assert main([*base, "--shards", "2", "--slices", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_ray_backend_trains_the_same_shards(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'medunlearn[ray]')")
    data = tiny()
    threads = torch.get_num_threads()
    cfg = dataclasses.replace(TRAIN, threads=1)  # the thread count of a Ray task
    try:
        local = train_sharded(data, MODEL, cfg, seed=0, shards=2, slices=2)
        remote = train_sharded(data, MODEL, cfg, seed=0, shards=2, slices=2, backend="ray",
                               num_cpus=2)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        torch.set_num_threads(threads)
    assert _digests(local.model) == _digests(remote.model)
    assert _same_weights(local.model, remote.model)


def test_a_study_grid_on_sharded_originals(synth_root, tmp_path):
    """``shards:`` in a study trains sharded originals; every cell runs on them, and a method
    that cannot handle an ensemble fails its cell with a message naming sisa."""
    from medunlearn.experiments import parse_experiment
    from medunlearn.experiments.report import write_report
    from medunlearn.experiments.runner import run_experiment
    from medunlearn.experiments.store import ResultsStore

    raw = {"name": "sharded", "datasets": [{"dataset": "breastmnist", "view": "binary"}],
           "forget": ["random:0.1"], "methods": ["retrain", "sisa", "finetune", "newton"],
           "augment": ["none"], "seeds": [0],
           "data": {"train_limit": 120, "eval_limit": 60, "verify_md5": False,
                    "download": False},
           "model": {"width": 4}, "train": {"epochs": 1, "batch_size": 32},
           "data_root": str(synth_root), "shards": 2, "slices": 2}
    summary = run_experiment(parse_experiment(raw), tmp_path / "res", progress=False)
    # retrain, sisa, finetune and the do-nothing row of the reference (the original scored)
    assert summary.completed == 4 and len(summary.failed) == 1
    assert "-newton-" in summary.failed[0]["slug"]
    assert "'sisa'" in summary.failed[0]["error"]
    with ResultsStore(tmp_path / "res", create=False) as store:
        rows = {r["method"]: r for r in store.rows()}
    assert rows["sisa"]["average_gap_pp"] == 0.0  # exact: the same model as the reference
    assert rows["finetune"]["UA"] is not None
    original = load_run(rows["sisa"]["original_dir"])
    assert isinstance(original.model, EnsembleClassifier) and original.model.shards.slices == 2
    write_report(tmp_path / "res", tmp_path / "report")
    assert "sisa" in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(ConfigError, match="add shards"):
        parse_experiment(raw | {"shards": None, "slices": 2})
    with pytest.raises(ConfigError, match="at least 1"):
        parse_experiment(raw | {"shards": 0})


def test_registry_on_a_sharded_model_forgets_a_patient_exactly_with_sisa(sharded_run, tmp_path,
                                                                          capsys):
    """The registry recommends sisa first for a sharded model; a patient's request is served by
    it (exact: the privacy checks are skipped as for retrain, the clinical ones still apply),
    and nothing derived from the patient stays in the registry."""
    from medunlearn.registry import status

    out, data, _ = sharded_run
    reg = tmp_path / "reg"
    assert main(["registry", "init", "--model", str(out), "--out", str(reg)]) == 0
    assert "sisa -> retrain" in capsys.readouterr().out
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"id": "S-1", "subject": "subject-1", "patients": ["P004"]}))
    assert main(["forget", str(reg), "--request", str(request)]) == 0
    capsys.readouterr()
    st = status(reg)
    assert st["active_version"]["method"] == "sisa"
    assert main(["registry", "residue", str(reg)]) == 0
    assert main(["audit", "verify", str(reg)]) == 0
    active = load_run(reg / "versions" / str(st["active_version"]["n"]))
    assert isinstance(active.model, EnsembleClassifier)


@pytest.mark.parametrize("keep", [5, 0])
def test_consolidating_a_sharded_model_retrains_only_the_shards_whose_data_changed(
        sharded_run, tmp_path, keep, monkeypatch, capsys):
    """After an approximate step and a failed request, a consolidation starts from the last
    exact version: with its checkpoints kept (--keep-superseded), sisa retrains only the shards
    holding an image withdrawn since and keeps the others byte for byte; once they are purged,
    it retrains every shard. Either way the result is the sharded model retrained from scratch
    without every withdrawn image, and the ledger says which shards were retrained."""
    import csv

    from medunlearn.registry import audit_registry, init_registry, ledger, status
    from medunlearn.registry import process_request as forget
    from medunlearn.registry.db import connect
    from medunlearn.registry.steps import unlearn_candidate
    from medunlearn.testing import fake_steps, fake_verify

    out, _, _ = sharded_run
    with open(out / "shards.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_patient: dict[str, list[dict]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    # one patient of shard 0 and one of shard 1 (not joined to another patient by a copy)
    group_size = {g: sum(r["group"] == g for r in rows) for g in {r["group"] for r in rows}}
    chosen = [next(p for p, rs in sorted(by_patient.items())
                   if group_size[rs[0]["group"]] == len(rs) and int(rs[0]["shard"]) == s)
              for s in (0, 1)]
    indices = sorted(int(r["index"]) for p in chosen for r in by_patient[p])
    reg = init_registry(out, tmp_path / "reg", warm=False, keep_superseded=keep)
    real = {"unlearn": unlearn_candidate}
    r1 = forget(reg, {"id": "R-1", "subject": "s1", "patients": [chosen[0]],
                      "method": "finetune"}, verify=fake_verify, **real)
    assert r1["method"] == "finetune" and r1["to_version"] == 2  # approximate: not exact
    failing = fake_steps(fail=["sisa", "retrain"])["verify"]
    r2 = forget(reg, {"id": "R-2", "subject": "s2", "patients": [chosen[1]]}, verify=failing,
                **real)
    assert r2["status"] == "failed"  # sisa refused (checkpoints dropped), retrain failed
    assert status(reg)["exactness"] == {"approximate_steps": 1, "withdrawn_not_forgotten": 2,
                                        "exact": False}
    from medunlearn.registry import steps

    monkeypatch.setattr(steps, "gate_candidate", fake_verify)  # the real unlearn step
    capsys.readouterr()
    assert main(["registry", "consolidate", str(reg), "--id", "C-1"]) == 0
    printed = capsys.readouterr().out
    c = forget(reg, {"id": "C-1", "subject": "scheduled-consolidation", "note": "",
                     "consolidate": True})  # the stored result
    assert c["reused"] and c["status"] == "completed"
    assert c["to_version"] == 3 and c["consolidated"] == 4
    sh = c["shards"]
    if keep:  # version 1's checkpoints are there: only shards 0 and 1 retrain
        assert c["method"] == "sisa" and sh["start_version"] == 1
        assert (sh["retrained"], sh["kept"], sh["count"]) == ([0, 1], [2], 3)
        assert "sisa from version 1 retrained shard(s) 0, 1 of 3" in printed
        assert "shard(s) 2 kept byte for byte" in printed
    else:  # purged with version 1: every shard from scratch
        assert c["method"] == "retrain" and sh["start_version"] == 2
        assert (sh["retrained"], sh["kept"]) == ([0, 1, 2], [])
        assert "retrain from version 2 retrained shard(s) 0, 1, 2 of 3" in printed
    conn = connect(reg)
    try:
        entry = [e for e in ledger.entries(conn, "C-1") if e["kind"] == "attempt"][-1]
        request = [e for e in ledger.entries(conn, "C-1") if e["kind"] == "request"][0]
    finally:
        conn.close()
    assert entry["body"]["shards"] == sh
    assert request["body"]["methods"] == (["sisa", "retrain"] if keep else ["retrain"])
    # the sharded model retrained from scratch without both patients, byte for byte
    ref = tmp_path / "ref"
    run_unlearning(out, method="retrain", forget=indices, out=ref, progress=False)
    v3 = reg / "versions" / "3"
    for s in range(3):
        for r in (1, 2):
            name = f"shards/shard-{s}/slice-{r}.safetensors"
            assert (v3 / name).read_bytes() == (ref / name).read_bytes()
            if s == 2:
                assert (v3 / name).read_bytes() == (out / name).read_bytes()
    assert _same_weights(load_run(v3).model, load_run(ref).model)
    with open(v3 / "forget.csv") as fh:  # the verification covers every withdrawn image
        assert sorted(int(x["index"]) for x in csv.DictReader(fh)) == indices
    st = status(reg)
    assert st["exactness"]["exact"] and st["active_version"]["method"] == c["method"]
    assert audit_registry(reg).ok
    # the next consolidation would start from version 3, unless a checkpoint was changed
    from medunlearn.registry.versions import sharded_start

    conn = connect(reg)
    try:
        assert sharded_start(reg, conn) == 3
        ck = v3 / "shards" / "shard-2" / "slice-1.safetensors"
        good = ck.read_bytes()
        ck.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        assert sharded_start(reg, conn) is None  # then every shard is retrained
        ck.write_bytes(good)
    finally:
        conn.close()

"""``oracle-match`` (issue 28): fine-tuning to the out-of-fold predictions of K fold models, on
tiny synthetic data (8x8 images, a small MLP, K = 3 fold models trained in a second)."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import medunlearn as mu
from medunlearn.config import TrainConfig
from medunlearn.errors import CheckpointError, ConfigError
from medunlearn.evaluation.companions import (
    KFOLD,
    CompanionSet,
    Recipe,
    balanced_halves,
    kfold_masks,
)
from medunlearn.methods import create_method
from medunlearn.methods.oracle_match import copies_seen, fold_probabilities
from medunlearn.runs.shadows import train_companions

FAST = {"epochs": 3, "batch_size": 32, "augment": False, "retain_budget": 64, "lr": 0.05,
        "noise": 0.0}
CFG = TrainConfig(epochs=30, batch_size=32, lr=0.05, select="last", progress=False,
                  precision="fp32", device="cpu", threads=1, weight_decay=0.0)
FORGET = list(range(0, 120, 6))  # 20 of 120 training images


def _data(seed=0, n_train=120):
    """8x8 images: two noisy class prototypes, 20% flipped labels (memorisable)."""
    rng = np.random.default_rng(seed)
    proto = np.random.default_rng(99).uniform(60, 190, (2, 8, 8))

    def split(n):
        y = rng.integers(0, 2, n)
        x = np.clip(proto[y] + rng.normal(0, 60, (n, 8, 8)), 0, 255).astype(np.uint8)
        return {"images": x, "labels": np.where(rng.random(n) < 0.2, 1 - y, y)}

    return mu.from_arrays({"train": split(n_train), "val": split(60), "test": split(40)},
                          augment="none")


def _net():
    return mu.as_classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(),
                                          nn.Linear(128, 2)))


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def original(data):
    """A model that memorised its training images (flipped labels included)."""
    from medunlearn.training import fit, seed_everything

    seed_everything(0)
    return fit(_net(), data, None, CFG, seed=0).model.eval()


@pytest.fixture(scope="module")
def folds(data, tmp_path_factory):
    recipe = Recipe(build=_net, train=dataclasses.replace(CFG, epochs=15), description="mlp")
    return train_companions(data, kfold_masks(len(data.train), 3, seed=0), recipe=recipe,
                            out=tmp_path_factory.mktemp("folds") / "kfold", kind=KFOLD,
                            rebuild="medunlearn shadows RUN --kind kfold --k 3",
                            progress=False)


def unlearn(original, data, folds, *, seed=0, **options):
    return mu.unlearn(original, data, forget=FORGET, method="oracle-match",
                      options=FAST | options, seed=seed, device="cpu", folds=folds,
                      train_config=CFG)


def _probs(model, data, idx):
    from medunlearn.training import predict_logits, softmax

    return softmax(predict_logits(model, data.train, torch.as_tensor(idx)))


def _kl(p, q):
    return float((p * (np.log(p + 1e-12) - np.log(q + 1e-12))).sum(axis=1).mean())


# ------------------------------------------------------------------------------ targets


def test_fold_probabilities_read_the_model_that_never_saw_each_image():
    k, n = 3, 7
    mask = kfold_masks(n, k, seed=0, pool=np.arange(6))  # image 6: outside the pool
    logits = np.zeros((k, n, 2), dtype=np.float32)
    logits[:, :, 1] = np.arange(k)[:, None]  # member j: logit gap j on every image
    cs = CompanionSet(path=None, manifest={"kind": KFOLD}, membership=mask,
                      train_hashes=["a"] * n, logits={"train": logits})
    p1 = lambda gap: 1 / (1 + np.exp(-gap))  # noqa: E731
    oof = fold_probabilities(cs, np.arange(n), out_of_fold=True)
    for i in range(6):
        j = int(np.flatnonzero(~mask[:, i])[0])
        assert oof[i, 1] == pytest.approx(p1(j))
    assert oof[6, 1] == pytest.approx(np.mean([p1(j) for j in range(k)]))  # all K
    inf = fold_probabilities(cs, np.arange(6), out_of_fold=False)
    for i in range(6):
        assert inf[i, 1] == pytest.approx(np.mean([p1(j) for j in np.flatnonzero(mask[:, i])]))
    assert np.allclose(oof.sum(axis=1), 1) and np.allclose(inf.sum(axis=1), 1)


def test_copies_in_another_fold_are_counted():
    mask = np.array([[False, True, True], [True, False, True]])  # image 0 out of member 0
    cs = CompanionSet(path=None, manifest={"kind": KFOLD}, membership=mask,
                      train_hashes=["h", "h", "x"], logits={})
    assert copies_seen(cs, np.array([0])) == 1  # member 0 trained on image 1, a copy of 0
    assert copies_seen(cs, np.array([2])) == 0


# ------------------------------------------------------------------------------ the method


def test_moves_forget_outputs_to_the_out_of_fold_predictions(original, data, folds):
    before = copy.deepcopy(original.state_dict())
    res = unlearn(original, data, folds, epochs=8, lr=0.05, retain_budget=None)
    for k, v in original.state_dict().items():
        assert torch.equal(v, before[k]), f"oracle-match changed the original ({k})"
    f = np.asarray(FORGET)
    target = fold_probabilities(folds, f, out_of_fold=True)
    kl_before = _kl(target, _probs(original, data, f))
    kl_after = _kl(target, _probs(res.model, data, f))
    assert kl_after < 0.7 * kl_before, (kl_before, kl_after)
    # the memorised forget images lose confidence towards the oracle's
    y = data.train.labels[f].numpy()
    conf = lambda p: p[np.arange(len(y)), y].mean()  # noqa: E731
    assert conf(_probs(res.model, data, f)) < conf(_probs(original, data, f))
    # retain images keep the original's outputs (its own targets)
    r = np.setdiff1d(np.arange(len(data.train)), f)
    assert _kl(_probs(original, data, r), _probs(res.model, data, r)) < kl_before
    details = res.record["details"]
    assert details["folds_k"] == 3 and details["folds_fingerprint"]
    assert details["oof_forget_true_prob"] == pytest.approx(
        float(target[np.arange(len(y)), y].mean()), abs=1e-5)


def test_reads_forget_and_retain_images_and_reports_them(original, data, folds):
    seen: list[torch.Tensor] = []
    mu.unlearn(original, data, forget=FORGET, method="oracle-match", options=FAST, seed=0,
               device="cpu", folds=folds, train_config=CFG, on_batch=seen.append)
    got = set(torch.cat(seen).tolist())
    assert set(FORGET) <= got and got - set(FORGET)


@pytest.mark.parametrize("options", [{}, {"noise": 0.3}, {"retain_target": "folds"},
                                     {"target_spread": 1.0}])
def test_reproducible_for_a_seed_and_different_across_seeds(original, data, folds, options):
    a = unlearn(original, data, folds, seed=1, **options).model.state_dict()
    b = unlearn(original, data, folds, seed=1, **options).model.state_dict()
    c = unlearn(original, data, folds, seed=2, **options).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_noise_spreads_the_runs(original, data, folds):
    """Seeded weight noise makes runs differ more, as retrained models do."""
    f = np.asarray(FORGET)

    def spread(**options):
        confs = [_probs(unlearn(original, data, folds, seed=s, **options).model, data, f)[:, 1]
                 for s in range(3)]
        return float(np.std(confs, axis=0).mean())

    assert spread(noise=0.5) > spread(noise=0.0)


def test_spread_targets_move_the_margin_by_the_unseen_spread():
    from medunlearn.methods.oracle_match import spread_targets

    p = np.tile([[0.2, 0.8]], (20000, 1))
    out = spread_targets(p, 0.5, torch.Generator().manual_seed(0))
    margin = np.log(out[:, 1] / out[:, 0])
    assert abs(margin.mean() - np.log(4)) < 0.02 and abs(margin.std() - 1.0) < 0.02
    again = spread_targets(p, 0.5, torch.Generator().manual_seed(0))
    assert np.array_equal(out, again)
    assert spread_targets(p, 0.0, torch.Generator().manual_seed(0)) is p


def test_unseen_logit_spread_is_the_members_disagreement_on_test_images():
    from medunlearn.methods.oracle_match import unseen_logit_spread

    rng = np.random.default_rng(0)
    margin = rng.normal(2.0, 1.0, (4, 5000))  # 4 models, margin sd 1 on each image
    logits = np.stack([-margin / 2, margin / 2], axis=2)
    cs = CompanionSet(path=None, manifest={"kind": KFOLD}, membership=np.ones((4, 3), bool),
                      train_hashes=["a"] * 3, logits={"test": logits})
    assert unseen_logit_spread(cs) == pytest.approx(0.5, abs=0.02)  # per class: margin sd / 2


def test_target_spread_spreads_the_runs_forget_outputs(original, data, folds):
    f = np.asarray(FORGET)

    def spread(**options):
        confs = [_probs(unlearn(original, data, folds, seed=s, epochs=8, **options).model,
                        data, f)[:, 1] for s in range(3)]
        return float(np.std(confs, axis=0).mean())

    assert spread(target_spread=1.0) > spread(target_spread=0.0)


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("option,value,range_", [
    ("noise", -0.1, "non-negative"), ("retain_target", "oracle", "original or folds"),
    ("epochs", 0, "at least 1"), ("lr", 0.0, "positive"),
    ("retain_budget", -1, "non-negative"), ("target_spread", -1.0, "non-negative"),
])
def test_bad_options_fail_before_any_work(option, value, range_):
    with pytest.raises(ConfigError, match=f"{option} of method 'oracle-match' must be {range_}"):
        create_method("oracle-match", {option: value})


def test_without_folds_the_core_refuses_before_any_work(original, data, monkeypatch):
    from medunlearn import api

    monkeypatch.setattr(api, "_run_method", lambda *a: pytest.fail("the method ran"))
    with pytest.raises(ConfigError, match="shadows RUN --kind kfold"):
        mu.unlearn(original, data, forget=FORGET, method="oracle-match", device="cpu")


def test_folds_of_other_data_or_another_kind_are_refused(original, data, folds, tmp_path):
    with pytest.raises(CheckpointError, match="other data.*--kind kfold --k 3"):
        unlearn(original, _data(seed=1), folds)
    recipe = Recipe(build=_net, train=dataclasses.replace(CFG, epochs=1), description="mlp")
    shadows = train_companions(data, balanced_halves(len(data.train), 4, seed=0),
                               recipe=recipe, out=tmp_path / "sh", progress=False)
    with pytest.raises(ConfigError, match="K-fold companion set"):
        unlearn(original, data, shadows)


def test_other_methods_ignore_folds(original, data):
    res = mu.unlearn(original, data, forget=FORGET, method="finetune", device="cpu",
                     options={"epochs": 1}, folds=None, train_config=CFG)
    assert res.record["method"] == "finetune"


def test_run_folders_find_refuse_and_key_on_their_folds(tmp_path, synth_root):
    """Through run folders: RUN/kfold is found by default, a missing set names the command
    that builds it, a set of another model names the command that rebuilds it, and the fold
    set is part of the unlearning run's identity."""
    from medunlearn.config import DataSource, ModelConfig
    from medunlearn.runs import run_training, run_unlearning
    from medunlearn.runs.shadows import companions_for_run

    run = tmp_path / "run"
    run_training(DataSource(dataset="breastmnist", data_root=str(synth_root), train_limit=80,
                            eval_limit=40, download=False, verify_md5=False),
                 ModelConfig(width=8), TrainConfig(epochs=1, progress=False, threads=1),
                 seed=0, out=run)
    kw = {"method": "oracle-match", "forget": "random:0.1", "progress": False,
          "options": {"epochs": 1, "retain_budget": 32, "noise": 0.0}}
    with pytest.raises(CheckpointError, match=f"medunlearn shadows {run} --kind kfold"):
        run_unlearning(run, out=tmp_path / "u0", **kw)
    assert not (tmp_path / "u0").exists()
    cs = companions_for_run(run, kind=KFOLD, k=2, progress=False)
    assert cs.path == run / "kfold"
    assert cs.manifest["rebuild"].startswith(f"medunlearn shadows {run} --kind kfold --k 2")
    m = run_unlearning(run, out=tmp_path / "u1", **kw)
    cfg = json.loads((tmp_path / "u1" / "config.json").read_text())
    assert cfg["method"]["folds"]["fingerprint"] == cs.manifest["fingerprint"]
    assert m["details"]["folds_k"] == 2
    # tune finds them too
    from medunlearn.runs import tune_method

    run_unlearning(run, method="retrain", forget="random:0.1", out=tmp_path / "ref",
                   progress=False)
    res = tune_method(run, method="oracle-match", forget="random:0.1", reference=tmp_path / "ref",
                      grid={"noise": [0.0, 0.3]}, options=kw["options"])
    assert [r["options"] for r in res["grid"]] == [{"noise": 0.0}, {"noise": 0.3}]
    # a set made for another model is refused with its rebuild command
    manifest = json.loads((run / "kfold" / "companions.json").read_text())
    manifest["source"]["fingerprint"] = "another-model"
    (run / "kfold" / "companions.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="another model.*--kind kfold --k 2"):
        run_unlearning(run, out=tmp_path / "u2", **kw)

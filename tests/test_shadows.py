"""Companion models (evaluation.companions, runs.shadows), the gate's membership check and
the do-nothing row, on tiny synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import medunlearn as mu
from medunlearn.config import TrainConfig
from medunlearn.errors import CheckpointError, ConfigError, OutputExistsError
from medunlearn.evaluation.companions import (
    KFOLD,
    Recipe,
    balanced_halves,
    kfold_masks,
    member_seed,
)
from medunlearn.evaluation.gate import gate
from medunlearn.runs.shadows import load_companions, train_companions, train_shadows

# ------------------------------------------------------------------------------ designs


@pytest.mark.parametrize("k", [4, 5, 16, 17])
def test_balanced_halves(k):
    n = 301
    mask = balanced_halves(n, k, seed=3)
    per_image = mask.sum(axis=0)
    if k % 2 == 0:
        assert (per_image == k // 2).all()
    else:
        assert set(per_image.tolist()) == {k // 2, k // 2 + 1}
        assert abs((per_image == k // 2).sum() - (per_image == k // 2 + 1).sum()) <= 1
    assert (np.abs(mask.sum(axis=1) - n / 2) < 4 * np.sqrt(n)).all()  # about half each
    assert (~mask).sum(axis=0).min() >= 2  # every image has OUT shadows too
    assert np.array_equal(mask, balanced_halves(n, k, seed=3))
    assert not np.array_equal(mask, balanced_halves(n, k, seed=4))


def test_balanced_halves_pool_and_too_few():
    mask = balanced_halves(50, 8, seed=0, pool=np.arange(10, 50))
    assert not mask[:, :10].any() and (mask[:, 10:].sum(axis=0) == 4).all()
    with pytest.raises(ConfigError, match="too few"):
        balanced_halves(50, 3, seed=0)


def test_kfold_masks_leave_each_image_out_once():
    mask = kfold_masks(103, 5, seed=1, pool=np.arange(100))
    assert ((~mask[:, :100]).sum(axis=0) == 1).all()
    assert not mask[:, 100:].any()
    out_sizes = (~mask[:, :100]).sum(axis=1)
    assert out_sizes.max() - out_sizes.min() <= 1


def test_member_seeds_are_derived_and_distinct():
    seeds = [member_seed(0, j) for j in range(32)]
    assert len(set(seeds)) == 32 and seeds == [member_seed(0, j) for j in range(32)]
    assert member_seed(1, 0) != member_seed(0, 0) != member_seed(0, 0, KFOLD)


# ------------------------------------------------------------------------------ tiny data


def _data(seed=0, n_train=200, noise=0.2):
    """8x8 images: two noisy class prototypes and 20% flipped labels (memorisable)."""
    rng = np.random.default_rng(seed)
    proto = np.random.default_rng(99).uniform(60, 190, (2, 8, 8))

    def split(n):
        y = rng.integers(0, 2, n)
        x = np.clip(proto[y] + rng.normal(0, 60, (n, 8, 8)), 0, 255).astype(np.uint8)
        return {"images": x, "labels": np.where(rng.random(n) < noise, 1 - y, y)}

    return mu.from_arrays({"train": split(n_train), "val": split(100), "test": split(60)},
                          augment="none")


def _net():
    return mu.as_classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(),
                                          nn.Linear(256, 2)))


CFG = TrainConfig(epochs=40, batch_size=32, lr=0.05, select="last", progress=False,
                  precision="fp32", device="cpu", threads=1, weight_decay=0.0)


def _recipe(epochs=3):
    import dataclasses

    return Recipe(build=_net, train=dataclasses.replace(CFG, epochs=epochs), description="mlp")


def _fit(data, idx, seed):
    from medunlearn.training import fit, seed_everything

    seed_everything(seed)
    return fit(_net(), data, idx, CFG, seed=seed).model


def test_train_companions_resumes_and_reuses(tmp_path, monkeypatch):
    import medunlearn.training as training

    data = _data(n_train=80)
    mask = balanced_halves(80, 4, seed=0)
    out = tmp_path / "sh"
    cs = train_companions(data, mask, recipe=_recipe(), out=out, progress=False)
    assert cs.k == 4 and np.array_equal(cs.membership, mask)
    assert cs.confidences("val").shape == (4, 100)
    assert cs.train_hashes == data.train.hashes
    manifest = json.loads((out / "companions.json").read_text())
    assert manifest["seeds"] == [member_seed(0, j) for j in range(4)]
    # the model-offset calibration is stored once, and read back instead of recomputed
    from medunlearn.evaluation.membership import model_offset

    stored = json.loads((out / "calibration.json").read_text())
    assert stored["fingerprint"] == manifest["fingerprint"]
    assert model_offset(load_companions(out), tuple(stored["known_out"])) == \
        stored["model_offset"]
    w0 = (out / "members" / "k00.safetensors").read_bytes()
    # an interrupted run: member 2 never finished
    (out / "members" / "k02.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete.*1 of 4"):
        load_companions(out)
    calls = []
    real_fit = training.fit
    monkeypatch.setattr(training, "fit", lambda *a, **kw: calls.append(1) or real_fit(*a, **kw))
    again = train_companions(data, mask, recipe=_recipe(), out=out, progress=False)
    assert len(calls) == 1  # only the missing member was trained
    assert (out / "members" / "k00.safetensors").read_bytes() == w0
    assert np.allclose(again.logits["test"][0], cs.logits["test"][0])
    # the same seed gives the same member
    assert np.allclose(again.logits["test"][2], cs.logits["test"][2], atol=1e-5)
    # another design in the same folder is refused unless overwritten
    with pytest.raises(OutputExistsError, match="another design"):
        train_companions(data, balanced_halves(80, 4, seed=1), recipe=_recipe(), out=out,
                         progress=False)


def test_trained_on_names_every_member_that_saw_an_image(tmp_path):
    data = _data(n_train=80)
    cs = train_companions(data, kfold_masks(80, 3, seed=0), recipe=_recipe(1), out=tmp_path,
                          kind=KFOLD, progress=False)
    i = 7
    assert sorted(cs.trained_on([i])) == np.flatnonzero(cs.membership[:, i]).tolist()
    assert len(cs.trained_on([i])) == 2  # K-fold: every model but one saw it
    assert cs.trained_on_hashes([data.train.hashes[i]]) == cs.trained_on([i])


def test_shadows_of_other_data_or_model_are_refused(tmp_path):
    data = _data(n_train=80)
    cs = train_companions(data, balanced_halves(80, 4, seed=0), recipe=_recipe(1),
                          out=tmp_path / "sh", progress=False,
                          source={"path": "runs/a", "fingerprint": "aaaa"},
                          rebuild="medunlearn shadows runs/a --k 4")
    other = _data(seed=1, n_train=80)
    with pytest.raises(CheckpointError, match="other data.*medunlearn shadows runs/a --k 4"):
        load_companions(tmp_path / "sh", data=other)
    with pytest.raises(CheckpointError, match="another model.*medunlearn shadows runs/a"):
        load_companions(tmp_path / "sh", fingerprints=["bbbb", None])
    load_companions(tmp_path / "sh", data=data, fingerprints=["bbbb", "aaaa"])  # its original
    with pytest.raises(CheckpointError, match="other data"):
        mu.evaluate(_net(), other, forget=[0, 1], shadows=cs, gate=True, device="cpu")
    with pytest.raises(CheckpointError, match="not a companion-model folder"):
        load_companions(tmp_path)


def test_membership_check_fails_a_memorising_model_and_passes_an_independent_one(tmp_path):
    """The end-to-end property: the untouched original (it memorised its training images,
    20% of them mislabelled) fails; a model retrained without the forget set passes; both are
    scored through medunlearn.evaluate, the original as the do-nothing row."""
    torch.set_num_threads(1)
    data = _data(seed=1)
    original = _fit(data, None, seed=0)
    # a random quarter forgotten; for a model that never saw them the test fails in 5% of
    # draws of data, forget set and shadows (seeds 1, 2, 3 all pass: z 0.4, 0.0, 0.2)
    forget = np.sort(np.random.default_rng(1).choice(200, 50, replace=False))
    retain = np.setdiff1d(np.arange(200), forget)
    retrained = _fit(data, torch.as_tensor(retain), seed=1)
    cs = train_shadows(original, data, out=tmp_path / "sh", k=8, seed=0, train_config=CFG,
                       model_factory=_net, device="cpu")
    report = {}
    for name, model in (("original", original), ("retrained", retrained)):
        r = mu.evaluate(model, data, forget=forget, original=original, reference=retrained,
                        shadows=cs, gate=True, device="cpu")
        check = next(c for c in r.verdict.checks if c["name"] == "membership")
        report[name] = (r.record["models"]["model"]["membership"], check)
        report[f"{name}_changed"] = next(c["status"] for c in r.verdict.checks
                                         if c["name"] == "forget_changed")
        report[f"{name}_effect"] = next(c["status"] for c in r.verdict.checks
                                        if c["name"] == "forget_effect")
        assert len(r.record["models"]["model"]["membership"]["images"]) == len(forget)
    sec, check = report["original"]
    assert sec["status"] == "fail" and check["status"] == "fail", sec["reason"]
    assert report["original_changed"] == "fail"  # and it is the original: nothing forgotten
    assert report["retrained_changed"] == "pass"
    # the paired test against the original: the original kept everything (share 0, no
    # noise); retraining is never failed by it
    assert report["original_effect"] == "fail"
    assert report["retrained_effect"] in ("pass", "cannot_say")
    sec, check = report["retrained"]
    assert sec["status"] == "pass" and check["status"] == "pass", sec["reason"]
    assert sec["z"] < report["original"][0]["z"] - 1.0


# ------------------------------------------------------------------------------ the gate


def _record(z=0.5, z_mem=6.0, ratio=1.0, ref=None, ref_util=None):
    util = {"TA": 0.9, "balanced_accuracy": 0.9, "majority_prediction_share": 0.6}
    model = {"utility": util, "membership": {"z": z, "p_value": 0.3, "z_if_member": z_mem,
                                             "sd_ratio": ratio, "n_tested": 40}}
    models = {"model": model, "original": {"utility": util}}
    if ref is not None or ref_util is not None:
        models["reference"] = {"utility": ref_util or util}
        if ref is not None:
            models["reference"]["membership"] = {"z": ref, "z_if_member": z_mem,
                                                 "sd_ratio": 1.0}
    return {"models": models}


def _membership(v):
    return next(c for c in v.checks if c["name"] == "membership")


def test_gate_membership_pass_fail_cannot_say_not_run():
    passed = gate(_record(z=0.5))
    assert _membership(passed)["status"] == "pass" and passed.passed
    failed = gate(_record(z=4.0))
    assert _membership(failed)["status"] == "fail" and not failed.passed
    assert failed.status == "failed" and any("membership" in r for r in failed.reasons)
    weak = gate(_record(z=0.5, z_mem=0.5))  # power well below 0.8
    c = _membership(weak)
    assert c["status"] == "cannot_say" and "power" in c["reason"]
    assert not weak.passed and weak.status == "cannot say"
    assert any("CANNOT SAY" in r for r in weak.reasons)
    unsure_ref = gate(_record(z=0.5, ref=3.0))  # the retrained reference itself looks IN
    assert _membership(unsure_ref)["status"] == "cannot_say"
    no_shadows = _record()
    del no_shadows["models"]["model"]["membership"]
    v = gate(no_shadows)
    c = _membership(v)
    assert c["status"] == "not_run" and "medunlearn shadows" in c["message"]
    assert v.passed  # like a skipped check; never reported as a pass of this check
    assert not gate(no_shadows, {"fail_on_skipped": True}).passed
    # tolerances: a stricter level passes what 0.05 fails
    assert _membership(gate(_record(z=2.0), {"membership_alpha": 0.01}))["status"] == "pass"
    with pytest.raises(ConfigError, match="membership_alpha"):
        gate(_record(), {"membership_alpha": 1.5})


def test_degenerate_reference_is_cannot_say_never_passed():
    one_class = {"TA": 0.39, "balanced_accuracy": 0.5, "majority_prediction_share": 1.0}
    rec = _record(ref_util=one_class)
    for role in ("model", "original", "reference"):
        rec["models"][role]["clinical"] = {"test": {"fnr": 0.1, "global_risk": 0.5}}
        rec["models"][role]["privacy"] = {"attack_auc": 0.5, "attack_auc_se": 0.01}
        rec["models"][role]["representation"] = {"probe_auc": 0.5, "probe_auc_se": 0.01}
    v = gate(rec)
    status = {c["name"]: c["status"] for c in v.checks}
    for name in ("fnr_vs_reference", "global_risk_vs_reference", "attack_auc", "probe_auc"):
        assert status[name] == "cannot_say"
    assert status["fnr_vs_original"] == "pass"
    assert not v.passed and v.status == "cannot say"
    assert any("predicts one class for 100%" in r for r in v.reasons)


def test_evaluate_record_flags_a_degenerate_reference():
    data = _data(n_train=80)
    constant = mu.as_classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)))
    with torch.no_grad():
        constant.module[1].weight.zero_()
        constant.module[1].bias.copy_(torch.tensor([5.0, 0.0]))
    r = mu.evaluate(_net(), data, forget=[0, 1, 2], reference=constant, gate=True,
                    device="cpu")
    assert "predicts one class" in r.record["degenerate"]["reference"]
    assert r.verdict.status == "cannot say" and not r.verdict.passed
    assert "shadow" in r.record["skipped"]["membership"]


# ------------------------------------------------------------------------------ run folders


def _train_args(root, out, seed=0):
    return ["train", "--dataset", "breastmnist", "--data-root", str(root), "--no-verify",
            "--no-download", "--epochs", "2", "--width", "4", "--quiet", "--seed", str(seed),
            "--out", str(out)]


def test_shadows_command_and_evaluate_with_shadows(synth_root, tmp_path, capsys):
    """'medunlearn shadows RUN', then 'evaluate --shadows' (the original scored as the
    do-nothing row); shadows of another model are refused with the command that rebuilds
    them; K < 4 is refused before anything is trained."""
    from medunlearn.cli import main

    orig, other = tmp_path / "orig", tmp_path / "other"
    assert main(_train_args(synth_root, orig)) == 0
    assert main(_train_args(synth_root, other, seed=1)) == 0
    assert main(["shadows", str(orig), "--k", "3", "-q"]) == 2
    assert "too few" in capsys.readouterr().err and not (orig / "shadows").exists()
    assert main(["shadows", str(orig), "--k", "4", "-q", "--data-root", str(synth_root)]) == 0
    assert "use them: medunlearn evaluate" in capsys.readouterr().out
    manifest = json.loads((orig / "shadows" / "companions.json").read_text())
    assert manifest["k"] == 4 and manifest["source"]["fingerprint"] == json.loads(
        (orig / "config.json").read_text())["fingerprint"]
    ref = tmp_path / "ref"
    assert main(["unlearn", "--model", str(orig), "--method", "retrain", "--forget",
                 "random:0.2", "--out", str(ref), "-q", "--data-root", str(synth_root)]) == 0
    capsys.readouterr()
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--model", str(orig), "--original", str(orig), "--reference",
                 str(ref), "--shadows", str(orig / "shadows"), "--gate", "--out", str(out),
                 "--data-root", str(synth_root)])
    assert code in (0, 3)  # tiny models: the gate may fail or be undecided, never refuse
    rec = json.loads(out.read_text())
    assert rec["counts"]["forget"] == len((ref / "forget.csv").read_text().splitlines()) - 1
    assert "do-nothing candidate" in " ".join(rec["notes"])
    sec = rec["models"]["model"]["membership"]
    assert sec["k"] == 4 and len(sec["images"]) == rec["counts"]["forget"]
    assert {"z", "p_value", "power", "status"} <= set(sec)
    assert rec["membership"]["source"]["fingerprint"] == manifest["source"]["fingerprint"]
    assert any(c["name"] == "membership" for c in rec["gate"]["checks"])
    # the same shadows for a model of another seed: refused before any model runs
    capsys.readouterr()
    assert main(["evaluate", "--model", str(other), "--forget", str(ref / "forget.csv"),
                 "--shadows", str(orig / "shadows"), "--out", str(tmp_path / "e2.json"),
                 "--data-root", str(synth_root)]) == 2
    err = capsys.readouterr().err
    assert "another model" in err and "medunlearn shadows" in err
    assert not (tmp_path / "e2.json").exists()
    # without shadows the check is not run, with the command that enables it
    assert main(["evaluate", "--model", str(ref), "--original", str(orig), "--gate", "--out",
                 str(tmp_path / "e3.json"), "--data-root", str(synth_root)]) in (0, 3)
    rec3 = json.loads((tmp_path / "e3.json").read_text())
    check = next(c for c in rec3["gate"]["checks"] if c["name"] == "membership")
    assert check["status"] == "not_run" and "medunlearn shadows" in check["message"]

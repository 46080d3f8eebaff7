"""Training runs: artefacts, reproducibility, loading back, refusal of bad outputs/checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medunlearn.checkpoint import load_run, load_run_and_data
from medunlearn.config import DataConfig, ModelConfig, TrainConfig
from medunlearn.data import load_dataset
from medunlearn.errors import CheckpointError, ConfigError, OutputExistsError
from medunlearn.runs import run_training
from medunlearn.training import class_weights, predict_logits, train_model

TINY = TrainConfig(epochs=2, batch_size=32, progress=False)


def _data(root, dataset="breastmnist", **kw):
    return DataConfig(dataset=dataset, data_root=str(root), download=False, verify_md5=False, **kw)


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "breast"
    metrics = run_training(_data(synth_root), ModelConfig(width=4), TINY, seed=3, out=out)
    return out, metrics


def test_run_folder_contents(trained):
    out, metrics = trained
    for name in ("model.safetensors", "config.json", "metrics.json", "curve.png", "manifest.csv",
                 "history.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["kind"] == "train"
    assert cfg["environment"]["medunlearn"] and "git_commit" in cfg["environment"]
    assert cfg["data"]["view"] == "binary" and cfg["data"]["positive_classes"] == [0]
    assert cfg["model"]["in_channels"] == 1 and cfg["model"]["num_classes"] == 2
    assert set(metrics["splits"]) == {"train", "val", "test"}
    for m in metrics["splits"].values():
        assert 0 <= m["accuracy"] <= 1 and len(m["per_class_recall"]) == 2
    assert metrics["train_seconds"] > 0
    # no staging folders left behind
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    lines = (out / "manifest.csv").read_text().splitlines()
    assert lines[0] == "index,sha256,label" and len(lines) == 1 + 160


def test_same_seed_same_numbers(synth_root, tmp_path):
    a = run_training(_data(synth_root), ModelConfig(width=4), TINY, seed=3, out=tmp_path / "a")
    b = run_training(_data(synth_root), ModelConfig(width=4), TINY, seed=3, out=tmp_path / "b")
    c = run_training(_data(synth_root), ModelConfig(width=4), TINY, seed=4, out=tmp_path / "c")
    assert a["splits"] == b["splits"]
    assert a["splits"] != c["splits"]
    wa = load_run(tmp_path / "a").model.state_dict()
    wb = load_run(tmp_path / "b").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_load_back_gives_same_predictions(trained, synth_root):
    out, _ = trained
    run, ds = load_run_and_data(out, data_root=str(synth_root))
    logits = predict_logits(run.model, ds.test)
    acc = float((logits.argmax(1) == ds.test.labels.numpy()).mean())
    assert acc == pytest.approx(run.metrics["splits"]["test"]["accuracy"])


def test_same_config_is_reused_not_retrained(trained, synth_root):
    out, _ = trained
    again = run_training(_data(synth_root), ModelConfig(width=4), TINY, seed=3, out=out)
    assert again.get("reused") is True


def test_different_run_in_output_folder_is_refused(trained, synth_root):
    out, _ = trained
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_training(_data(synth_root), ModelConfig(width=4), TINY, seed=9, out=out)
    assert (out / "model.safetensors").read_bytes() == before


def test_overwrite_replaces(synth_root, tmp_path):
    out = tmp_path / "r"
    run_training(_data(synth_root), ModelConfig(width=4), TINY, seed=1, out=out)
    run_training(_data(synth_root), ModelConfig(width=4), TINY, seed=2, out=out, overwrite=True)
    assert json.loads((out / "config.json").read_text())["seed"] == 2


def test_failure_leaves_nothing_behind(synth_root, tmp_path, monkeypatch):
    import medunlearn.runs.train as runs

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(runs, "train_model", boom)
    with pytest.raises(RuntimeError):
        run_training(_data(synth_root), ModelConfig(width=4), TINY, seed=1, out=tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_channel_or_class_mismatch(trained, synth_root):
    out, _ = trained
    run = load_run(out)
    ds = load_dataset(_data(synth_root, dataset="dermamnist"))
    from medunlearn.checkpoint import check_compatible

    with pytest.raises(CheckpointError, match="1-channel images but dermamnist has 3"):
        check_compatible(run, ds)
    ds_native = load_dataset(_data(synth_root, dataset="pathmnist", view="native"))
    with pytest.raises(CheckpointError, match="2 output classes"):
        check_compatible(run, ds_native)


def test_corrupt_or_mismatched_weights(trained, tmp_path):
    import shutil

    out, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_run(bad)
    shutil.copy(out / "model.safetensors", bad / "model.safetensors")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["width"] = 8
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_run(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "nowhere")


def test_class_weights_balanced_matches_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = torch.tensor([0, 0, 0, 1, 2, 2])
    w = class_weights(y, 3, "balanced")
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y.numpy())
    assert np.allclose(w.numpy(), ref)
    assert class_weights(y, 3, "none") is None
    with pytest.raises(ConfigError):
        class_weights(y, 3, "odd")


def test_bad_train_config(synth_root):
    ds = load_dataset(_data(synth_root))
    with pytest.raises(ConfigError, match="epochs"):
        train_model(ds, ModelConfig(width=4), TrainConfig(epochs=0), seed=0)
    with pytest.raises(ConfigError, match="selection"):
        train_model(ds, ModelConfig(width=4), TrainConfig(select="best"), seed=0)


@pytest.mark.integration
def test_breastmnist_learns(medmnist_root, tmp_path):
    """A short run on real BreastMNIST beats chance clearly. One thread: float sums are
    ordered differently with more threads, and this short run's result depends on that."""
    cfg = DataConfig(dataset="breastmnist", data_root=str(medmnist_root), download=False)
    threads = torch.get_num_threads()
    try:
        m = run_training(cfg, ModelConfig(width=8),
                         TrainConfig(epochs=10, progress=False, threads=1), seed=0,
                         out=tmp_path / "b")
    finally:
        torch.set_num_threads(threads)
    assert m["splits"]["test"]["auc"] > 0.7


@pytest.mark.parametrize("total", [1, 2, 3, 4, 10, 1000])
def test_one_cycle_schedule_any_length(total):
    from medunlearn.training import one_cycle

    f = [one_cycle(s, total) for s in range(total + 1)]
    assert max(f) <= 1.0 and min(f) >= 0.01 - 1e-12
    if total >= 4:
        assert f[0] < max(f) and f[-1] < max(f)


def test_single_step_training_runs(synth_root):
    ds = load_dataset(_data(synth_root, train_limit=40))
    fit, _ = train_model(ds, ModelConfig(width=4),
                         TrainConfig(epochs=1, batch_size=64, progress=False), seed=0)
    assert fit.steps == 1


def test_training_layout_avoids_the_channels_last_strided_1x1_backward_bug():
    # torch 2.14's channels-last backward of a strided 1x1 convolution with < 16 input channels
    # corrupts memory on odd batch sizes: width-8 models (8 -> 16 shortcut) train contiguous
    from medunlearn.models import build_model
    from medunlearn.training import training_layout

    narrow = build_model("resnet18", in_channels=1, num_classes=2, width=8)
    default = build_model("resnet18", in_channels=1, num_classes=2, width=16)
    assert training_layout(narrow) == torch.contiguous_format
    assert training_layout(default) == torch.channels_last

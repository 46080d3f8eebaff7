"""The run-folder layer wraps the core and adds nothing to its numbers: unlearning a run folder is
``api.unlearn`` on the loaded model, evaluating one is ``api.evaluate`` after the comparability
checks (on every path, not only the CLI's); the feature cache is an explicit argument; the data
options of the CLI come from one definition (``config.DataSource``). Synthetic data, tiny models."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from medunlearn import api
from medunlearn.cache import Session
from medunlearn.checkpoint import load_run_and_data, read_indices
from medunlearn.config import DataConfig, DataSource, ModelConfig, TrainConfig
from medunlearn.errors import CheckpointError, ConfigError
from medunlearn.fileio import dumps_json
from medunlearn.runs import evaluate_run, run_training, run_unlearning
from medunlearn.runs.evaluate import forget_set_of
from medunlearn.runs.unlearn import model_config, train_config


@pytest.fixture(scope="module")
def folders(tmp_path_factory, synth_root) -> dict[str, Path]:
    """An original, its retrained reference, a SalUn-CRA run of the same forget set, and a
    retrain of another forget set (a wrong reference)."""
    root = tmp_path_factory.mktemp("runs")
    data = DataConfig(dataset="breastmnist", train_limit=120, eval_limit=60,
                      data_root=str(synth_root), download=False, verify_md5=False)
    run_training(data, ModelConfig(width=4),
                 TrainConfig(epochs=1, batch_size=32, precision="fp32", device="cpu",
                             progress=False), seed=0, out=root / "orig")
    common = {"seed": 0, "progress": False, "device": "cpu"}
    run_unlearning(root / "orig", method="retrain", forget="random:0.2", out=root / "ref",
                   **common)
    run_unlearning(root / "orig", method="salun-cra", forget="random:0.2", out=root / "cra",
                   options={"epochs": 1}, **common)
    run_unlearning(root / "orig", method="retrain", forget="random:0.25", out=root / "other",
                   **common)
    return {k: root / k for k in ("orig", "ref", "cra", "other")}


def test_unlearning_a_run_folder_is_the_core_on_the_loaded_model(folders, tmp_path):
    """The saved weights are bit for bit those of api.unlearn on the loaded run, with the run's
    recipe; the forget set is the one recorded."""
    run, data = load_run_and_data(folders["orig"])
    forget = read_indices(folders["cra"] / "forget.csv")
    result = api.unlearn(run.model, data, forget=forget, method="salun-cra", seed=0,
                         options={"epochs": 1}, device="cpu", train_config=train_config(run),
                         model_factory=run.config["model"], model_config=model_config(run))
    saved, _ = load_run_and_data(folders["cra"])
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, saved.model.state_dict()[k]), k
    assert sorted(result.forget.tolist()) == sorted(forget)


def test_evaluating_a_run_folder_is_the_core_after_the_checks(folders):
    record = evaluate_run(folders["cra"], original=folders["orig"], reference=folders["ref"],
                          options={"device": "cpu"})
    run, data = load_run_and_data(folders["cra"])
    orig, _ = load_run_and_data(folders["orig"])
    ref, _ = load_run_and_data(folders["ref"])
    core, verdict = api.evaluate(run.model, data, forget=forget_set_of(run, data, []),
                                 original=orig.model, reference=ref.model, gate=False,
                                 options={"device": "cpu"}, device=None,
                                 records={"model": run.metrics, "original": orig.metrics,
                                          "reference": ref.metrics})
    assert verdict is None and "gate" not in record
    assert set(record) - set(core) == {"runs", "evaluate_seconds"}
    assert dumps_json({k: record[k] for k in core}) == dumps_json(core)  # nan as null
    assert record["runs"]["reference"]["path"] == str(folders["ref"])


def test_every_evaluate_path_refuses_a_reference_of_another_forget_set(folders):
    """Not only the CLI: the Python run-folder API (and so grids and the registry) checks."""
    with pytest.raises(CheckpointError, match="different set of samples"):
        evaluate_run(folders["cra"], reference=folders["other"])
    with pytest.raises(CheckpointError, match="not a retrained reference"):
        evaluate_run(folders["cra"], reference=folders["cra"])


def test_gated_evaluation_records_the_verdict(folders):
    record = evaluate_run(folders["cra"], original=folders["orig"], reference=folders["ref"],
                          options={"device": "cpu"}, gate=True)
    assert isinstance(record["gate"]["passed"], bool) and record["gate"]["checks"]
    assert list(record)[-3:] == ["runs", "evaluate_seconds", "gate"]  # as written before


def test_an_explicit_cache_serves_the_run_folder_layer(folders):
    """cache= reaches loading and inference without an ambient session: the data are loaded
    once, and evaluating the same models again computes no image twice."""
    session = Session()
    first = evaluate_run(folders["cra"], original=folders["orig"], options={"device": "cpu"},
                         cache=session)
    assert len(session.datasets) == 1 and session.misses > 0
    misses = session.misses
    second = evaluate_run(folders["cra"], original=folders["orig"], options={"device": "cpu"},
                          cache=session)
    assert session.misses == misses and session.hits >= misses
    assert len(session.datasets) == 1
    assert second["models"]["model"]["utility"]["TA"] == first["models"]["model"]["utility"]["TA"]


def test_infer_with_an_explicit_cache_equals_without(folders):
    from medunlearn.loop import infer

    run, data = load_run_and_data(folders["orig"])
    session = Session()
    idx = np.array([5, 2, 5, 9])
    plain, _ = infer(run.model, data.train, idx)
    cached, _ = infer(run.model, data.train, idx, cache=session)
    assert session.misses == 3 and session.hits == 1
    np.testing.assert_allclose(cached, plain, atol=1e-5)


def test_train_and_pipeline_take_the_same_data_options_from_one_definition():
    from medunlearn.commands.pipeline import pipeline
    from medunlearn.commands.train import train

    fields = [f.name for f in dataclasses.fields(DataSource)]
    negated = {f.name: f.metadata["flags"][0].lstrip("-").replace("-", "_")
               for f in dataclasses.fields(DataSource) if f.metadata.get("negate")}
    expected = [negated.get(n, n) for n in fields]
    for command in (train, pipeline):
        names = list(inspect.signature(command).parameters)
        assert [n for n in names if n in expected] == expected
        assert "data" not in names


def test_data_source_refuses_options_of_the_other_kind(tmp_path):
    with pytest.raises(ConfigError, match="apply to your own images"):
        DataSource(dataset="breastmnist", positive_values="TB")
    (tmp_path / "labels.csv").write_text("path,label\n")
    with pytest.raises(ConfigError, match="binary view"):
        DataSource(dataset=str(tmp_path / "labels.csv"), view="native")
    assert DataSource(dataset="breastmnist").kind == "medmnist"
    assert DataSource(dataset=str(tmp_path / "labels.csv")).kind == "manifest"
    assert DataSource(dataset=str(tmp_path)).kind == "folder"
    # MedMNIST options become exactly the DataConfig run folders record
    src = DataSource(dataset="breastmnist", view="binary", train_limit=50, download=False)
    assert src.medmnist() == DataConfig(dataset="breastmnist", view="binary", train_limit=50,
                                        download=False)

"""End to end: every part-A method through run_unlearning on a tiny BreastMNIST model, the run
folder it writes, chaining, the CLI (unlearn, methods, tune) and its error exits."""

from __future__ import annotations

import csv
import json
import tomllib

import pytest
import torch

from medunlearn.checkpoint import load_run, load_run_and_data, read_indices
from medunlearn.cli import main
from medunlearn.config import DataConfig, ModelConfig, TrainConfig
from medunlearn.runs import run_training, run_unlearning

PART_A = ("retrain", "finetune", "gradient-ascent", "neggrad-plus", "random-label",
          "boundary-shrink", "l1-sparse", "salun", "salun-cra")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, medmnist_root):
    """A width-8 ResNet-18 trained for one epoch on 120 real BreastMNIST images."""
    out = tmp_path_factory.mktemp("tiny") / "orig"
    data = DataConfig(dataset="breastmnist", train_limit=120, eval_limit=80,
                      data_root=str(medmnist_root), download=False)
    run_training(data, ModelConfig(width=8),
                 TrainConfig(epochs=1, batch_size=64, schedule="constant", threads=1,
                             progress=False), seed=0, out=out)
    return out


def _opts(name):
    return {} if name == "retrain" else {"epochs": 1}


@pytest.mark.parametrize("name", PART_A)
def test_method_end_to_end_writes_a_loadable_run(tiny_run, tmp_path, name):
    out = tmp_path / name
    metrics = run_unlearning(tiny_run, method=name, forget="random:0.2", seed=1, out=out,
                             options=_opts(name), progress=False)
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json",
                                              "metrics.json", "forget.csv"}
    for key in ("unlearn_seconds", "cpu_seconds", "peak_memory_mb", "steps", "splits",
                "forget_accuracy", "retain_accuracy", "test_accuracy"):
        assert key in metrics
    assert metrics["steps"] > 0 and metrics["unlearn_seconds"] > 0
    assert set(metrics["splits"]) == {"val", "test", "forget", "retain"}  # train = forget + retain
    assert json.loads((out / "metrics.json").read_text())["steps"] == metrics["steps"]
    cfg = json.loads((out / "config.json").read_text())
    orig = json.loads((tiny_run / "config.json").read_text())
    assert cfg["kind"] == "unlearn" and cfg["method"]["name"] == name
    assert cfg["data"] == orig["data"] and cfg["model"] == orig["model"]
    assert cfg["train"] == orig["train"] and cfg["seed"] == orig["seed"]
    assert cfg["forget"] == {"spec": "random:0.2", "count": 24, "excluded_count": 0}
    assert len(cfg["original"]["weights_sha256"]) == 64
    if name != "retrain":
        assert cfg["method"]["options"]["epochs"] == 1
    # the unlearned folder is itself a model for every command: it loads with its data
    run, ds = load_run_and_data(out)
    assert len(ds.train) == 120 and len(read_indices(out / "forget.csv")) == 24
    rows = list(csv.DictReader((out / "forget.csv").open()))
    assert all(r["sha256"] == ds.train.hashes[int(r["index"])] for r in rows)


def test_chaining_excludes_earlier_forget_set_and_budget_limits_retain(tiny_run, tmp_path):
    first = tmp_path / "first"
    run_unlearning(tiny_run, method="finetune", forget="random:0.2", seed=0, out=first,
                   options={"epochs": 1}, progress=False)
    earlier = read_indices(first / "forget.csv")
    seen: list[torch.Tensor] = []
    second = tmp_path / "second"
    m = run_unlearning(first, method="finetune", forget="random:0.1", seed=0, out=second,
                       exclude=earlier, retain_budget=16, options={"epochs": 2},
                       progress=False, on_batch=seen.append)
    now = read_indices(second / "forget.csv")
    assert not set(now) & set(earlier)
    assert not set(torch.cat(seen).tolist()) & (set(now) | set(earlier))
    assert sum(len(b) for b in seen) == 2 * 16  # two epochs of 16 retain samples
    cfg = json.loads((second / "config.json").read_text())
    assert cfg["forget"]["excluded_count"] == 24 and cfg["original"]["kind"] == "unlearn"
    assert m["retain_count"] == 120 - 24 - len(now)
    assert load_run(second).config["method"]["options"]["retain_budget"] == 16
    # chaining from an unlearned run excludes everything forgotten so far, even unasked
    third = tmp_path / "third"
    seen.clear()
    run_unlearning(second, method="finetune", forget="random:0.1", seed=0, out=third,
                   options={"epochs": 1}, progress=False, on_batch=seen.append)
    gone = set(earlier) | set(now)
    assert set(read_indices(third / "excluded.csv")) == gone
    assert not set(read_indices(third / "forget.csv")) & gone
    assert not set(torch.cat(seen).tolist()) & gone


def test_cli_unlearn_prints_summary(tiny_run, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["unlearn", "--model", str(tiny_run), "--method", "salun-cra", "--forget",
                 "positive:0.5", "--seed", "0", "--out", str(out), "--option", "epochs=1",
                 "--option", "mask_fraction=0.3", "--retain-budget", "32", "--quiet"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "forget" in text and "retain" in text and "test" in text and "steps" in text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"]["options"]["mask_fraction"] == 0.3
    assert cfg["method"]["options"]["retain_budget"] == 32


@pytest.mark.parametrize("args, message", [
    (["--method", "salun-x", "--forget", "random:0.2"], "valid methods: retrain"),
    (["--method", "salun", "--forget", "random:2"], "strictly between 0 and 1"),
    (["--method", "salun", "--forget", "hashes:/nope.txt"], "does not exist"),
    (["--method", "salun", "--forget", "random:0.2", "--option", "lr"], "key=value"),
    (["--method", "salun", "--forget", "random:0.2", "--option", "learning_rate=1"],
     "Unknown option"),
    (["--method", "finetune", "--forget", "random:0.2", "--retain-budget", "-5"],
     "non-negative"),
])
def test_cli_errors_exit_2_with_message(tiny_run, tmp_path, capsys, args, message):
    code = main(["unlearn", "--model", str(tiny_run), "--out", str(tmp_path / "x"), "-q",
                 *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_existing_output_and_missing_model(tiny_run, tmp_path, capsys):
    code = main(["unlearn", "--model", str(tiny_run), "--method", "finetune", "--forget",
                 "class:1", "--out", str(tiny_run), "-q"])
    assert code == 2 and "already holds files" in capsys.readouterr().err
    code = main(["unlearn", "--model", str(tmp_path / "none"), "--method", "finetune",
                 "--forget", "class:1", "--out", str(tmp_path / "o"), "-q"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_cli_methods_lists_names_summaries_and_defaults(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name in PART_A:
        assert name in text
    assert "mask_fraction=0.5" in text and "saliency" in text


def test_tune_picks_from_grid_without_test_split(tiny_run, tmp_path, capsys, monkeypatch):
    import medunlearn.training as training

    used: list[str] = []
    real = training.predict_logits

    def spy(model, split, *args, **kwargs):
        used.append(split.name)
        return real(model, split, *args, **kwargs)


    ref = tmp_path / "ref"
    run_unlearning(tiny_run, method="retrain", forget="random:0.2", seed=0, out=ref,
                   progress=False)
    snippet = tmp_path / "tuned.toml"
    code = main(["tune", "--model", str(tiny_run), "--method", "finetune", "--forget",
                 "random:0.2", "--seed", "0", "--reference", str(ref), "--lrs", "0.01,0.001",
                 "--epochs", "1", "--out", str(snippet)])
    text = capsys.readouterr().out
    assert code == 0, text
    parsed = tomllib.loads(snippet.read_text())
    chosen = parsed["breastmnist"]["finetune"]
    assert chosen["lr"] in (0.01, 0.001) and chosen["epochs"] == 1
    assert "# grid" in snippet.read_text()
    as_json = tmp_path / "tuned.json"
    monkeypatch.setattr(training, "predict_logits", spy)
    assert main(["tune", "--model", str(tiny_run), "--method", "finetune", "--forget",
                 "random:0.2", "--seed", "0", "--reference", str(ref), "--lrs", "0.01",
                 "--epochs", "1", "--out", str(as_json)]) == 0
    result = json.loads(as_json.read_text())
    assert len(result["grid"]) == 1 and "test_accuracy" not in result["grid"][0]
    assert used and set(used) <= {"val", "train"}, "tune looked at the test split"
    # a reference for a different forget set is refused
    code = main(["tune", "--model", str(tiny_run), "--method", "finetune", "--forget",
                 "random:0.2", "--seed", "5", "--reference", str(ref), "--out",
                 str(tmp_path / "t2.toml")])
    assert code == 2 and "different set of samples" in capsys.readouterr().err


def test_cli_exclude_file_and_forget_csv(tiny_run, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["unlearn", "-m", str(tiny_run), "--method", "gradient-ascent", "--forget",
                 "random:0.25", "-o", str(first), "-O", "epochs=1", "-q"]) == 0
    earlier = set(read_indices(first / "forget.csv"))
    for exclude in (first / "forget.csv", tmp_path / "ex.txt"):
        (tmp_path / "ex.txt").write_text("\n".join(map(str, sorted(earlier))) + "\n")
        out = tmp_path / f"second-{exclude.suffix}"
        assert main(["unlearn", "-m", str(first), "--method", "gradient-ascent", "--forget",
                     "random:0.25", "--exclude", str(exclude), "-o", str(out), "-O",
                     "epochs=1", "-q"]) == 0
        assert not set(read_indices(out / "forget.csv")) & earlier
    (tmp_path / "bad.txt").write_text("1\nx\n")
    code = main(["unlearn", "-m", str(first), "--method", "gradient-ascent", "--forget",
                 "random:0.25", "--exclude", str(tmp_path / "bad.txt"), "-o",
                 str(tmp_path / "z"), "-q"])
    assert code == 2 and "line 2" in capsys.readouterr().err


def test_retain_budget_is_recorded_as_not_applied_for_retrain(tiny_run, tmp_path, capsys):
    out = tmp_path / "rt"
    assert main(["unlearn", "-m", str(tiny_run), "--method", "retrain", "--forget", "class:1",
                 "--retain-budget", "5", "-o", str(out), "-q"]) == 0
    assert "not applied" in capsys.readouterr().out
    method = json.loads((out / "config.json").read_text())["method"]
    assert method["retain_budget"] == 5 and method["retain_budget_applied"] is False

"""Tuning: option grids, the tie rule, and the published defaults matching their record."""

from __future__ import annotations

import tomllib
from importlib import resources

import pytest

from medunlearn.config import DataConfig, ModelConfig, TrainConfig
from medunlearn.errors import ConfigError
from medunlearn.methods import EXACT_METHODS, create_method, method_names
from medunlearn.methods.base import default_options, get_method_class, resolve_method
from medunlearn.runs import run_training, run_unlearning, tune_method
from medunlearn.tuning import (
    TUNE_CRITERION,
    choose,
    default_grid,
    load_tuning_record,
    load_tuning_spec,
    parse_grid,
    render_methods_toml,
    summarize,
    tune_snippet,
)


def _row(score, steps, **opts):
    return {"options": opts, "score": score, "steps": steps}


def test_choose_takes_the_cheapest_point_among_ties():
    rows = [_row(0.050, 100, a=1), _row(0.052, 40, a=2), _row(0.060, 10, a=3)]
    assert choose(rows, 0.003)["options"] == {"a": 2}  # 0.052 ties with 0.050, fewer steps
    assert choose(rows, 0.0)["options"] == {"a": 1}  # no tolerance: the best score
    assert choose(rows, 0.02)["options"] == {"a": 3}
    # equal steps: the lower score, then the first listed
    assert choose([_row(0.05, 5, a=1), _row(0.049, 5, a=2)], 0.01)["options"] == {"a": 2}


def test_worst_case_scores_each_point_by_its_worst_forget_set():
    from medunlearn.tuning import worst_case

    def result(spec, scores, steps):
        grid = [{"options": {"lr": lr}, "score": sc, "steps": st, "seconds": st / 10,
                 "forget_accuracy": sc, "val_accuracy": 0.9, "agreement": 0.95,
                 "forget_prob_w1": 0.01}
                for lr, sc, st in zip((0.001, 0.003), scores, steps, strict=False)]
        return {"method": "salun", "forget": spec, "reference": f"ref-{spec}", "grid": grid,
                "grid_spec": {"lr": [0.001, 0.003]}, "chosen": {},
                "reference_scores": {"forget_accuracy": 0.9}}

    # lr 0.003 is best at 10% (0.010 against 0.020, beyond the tolerance) but collapses at 50%
    small, large = result("random:0.1", (0.020, 0.010), (12, 12)), \
        result("random:0.5", (0.030, 0.400), (40, 40))
    assert choose(small["grid"], 0.003)["options"] == {"lr": 0.003}
    out = worst_case([small, large], 0.003)
    assert out["chosen"] == {"lr": 0.001} and out["forget"] == ["random:0.1", "random:0.5"]
    first, second = out["grid"]
    assert (first["score"], first["worst_forget"], first["steps"]) == (0.030, "random:0.5", 52)
    assert first["scores"] == {"random:0.1": 0.020, "random:0.5": 0.030}
    assert second["score"] == 0.400 and second["forget_accuracy"] == 0.400  # the worst set's
    # the record keeps the per-forget scores, and the chosen point is re-derivable from it
    kept = summarize(out)
    assert kept["forget"] == ["random:0.1", "random:0.5"] and kept["score"] == 0.03
    assert choose(kept["grid"], 0.003)["options"] == kept["chosen"]
    with pytest.raises(ConfigError, match="different grids"):
        worst_case([small, result("random:0.5", (0.1,), (1,))], 0.003)


def test_choose_never_picks_a_point_that_did_nothing():
    from medunlearn.tuning import rejects_as_do_nothing, worst_case

    def row(score, steps, moved, **opts):
        return _row(score, steps, **opts) | {"moved": moved, "seconds": 1.0}

    # the cheapest point ties on score but barely moved from the original: rejected
    rows = [row(0.050, 10, 0.05, a=1), row(0.051, 40, 0.9, a=2), row(0.08, 5, 1.1, a=3)]
    assert choose(rows, 0.003)["options"] == {"a": 1}  # without the rule: the lazy point
    assert choose(rows, 0.003, min_move=0.25)["options"] == {"a": 2}
    assert "indistinguishable from doing nothing" in rejects_as_do_nothing(rows[0], 0.25)
    assert rejects_as_do_nothing(rows[1], 0.25) is None
    assert rejects_as_do_nothing(_row(0.05, 1, a=1), 0.25) is None  # not measured: not judged
    # all rejected: the closest is still chosen (tune_method adds a warning)
    lazy = [row(0.02, 10, 0.0, a=1), row(0.01, 20, 0.1, a=2)]
    assert choose(lazy, 0.0, min_move=0.25)["options"] == {"a": 2}
    # over several forget sets a point's smallest move counts
    def result(spec, moves):
        return {"forget": spec, "reference": "r", "reference_scores": {},
                "grid": [row(0.01 * (i + 1), 1, m, a=i) for i, m in enumerate(moves)]}
    combined = worst_case([result("random:0.1", (0.9, 0.8)), result("random:0.5", (0.1, 0.7))],
                          0.05, min_move=0.25)
    assert [r["moved"] for r in combined["grid"]] == [0.1, 0.7]
    assert combined["chosen"] == {"a": 1}


def test_a_stored_tuning_result_is_stale_after_a_grid_change_or_a_revision(monkeypatch):
    from medunlearn.tuning import (
        TUNE_RULES,
        default_grid,
        do_nothing_min_move,
        grid_as_options,
        is_current,
    )

    recipe = load_tuning_spec()["recipe"]
    stored = {"grid_spec": grid_as_options(default_grid("ssd")), "revision": 1,
              "seed": recipe["seed"], "tolerance": recipe["tolerance"],
              "criterion": TUNE_CRITERION, "min_move": do_nothing_min_move(),
              "rule": TUNE_RULES}
    assert is_current(stored, "ssd")
    assert not is_current({k: v for k, v in stored.items() if k != "rule"}, "ssd")
    assert not is_current({k: v for k, v in stored.items() if k != "min_move"}, "ssd")
    assert not is_current(stored | {"tolerance": 0.5}, "ssd")
    assert not is_current(stored | {"criterion": "accuracy only"}, "ssd")
    assert not is_current(stored | {"revision": 0}, "ssd")  # tuned before the fix
    assert not is_current(stored | {"grid_spec": {"alpha": [10.0]}}, "ssd")
    assert grid_as_options({"retain-budget": [1024, "none"]}) == {"retain_budget": [1024, None]}
    monkeypatch.setattr(get_method_class("ssd"), "revision", 2)
    assert not is_current(stored, "ssd")


def test_parse_grid_reads_values_like_options():
    assert parse_grid(["lr=0.003,0.01", "retain-budget=1024,none", "scope=head"]) == {
        "lr": [0.003, 0.01], "retain_budget": [1024, None], "scope": ["head"]}
    for bad, msg in ((["lr"], "key=v1,v2"), (["lr="], "key=v1,v2"),
                     (["lr=1", "lr=2"], "given twice")):
        with pytest.raises(ConfigError, match=msg):
            parse_grid(bad)


def test_optional_options_take_none_words_from_files():
    # TOML has no null: "none" in methods.toml leaves an optional option unset
    assert create_method("finetune", {"retain_budget": "none"}).config.retain_budget is None
    assert create_method("finetune", {"retain_budget": "NULL"}).config.retain_budget is None
    with pytest.raises(ConfigError, match="lr"):
        create_method("finetune", {"lr": "none"})  # not optional: still an error


def test_every_method_has_a_valid_default_grid():
    spec = load_tuning_spec()
    assert set(spec["grid"]) <= set(method_names())
    for method in method_names():
        grid = default_grid(method)
        if method in EXACT_METHODS:
            assert not grid  # the exact methods have nothing to tune
            continue
        assert grid, f"{method} has no search space in defaults/tuning.toml"
        for key, values in grid.items():  # each value builds a valid method
            for v in values:
                resolve_method(method, dataset=None, options={key: v})


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, medmnist_root):
    root = tmp_path_factory.mktemp("tune")
    data = DataConfig(dataset="breastmnist", train_limit=120, eval_limit=80,
                      data_root=str(medmnist_root), download=False)
    run_training(data, ModelConfig(width=8),
                 TrainConfig(epochs=1, batch_size=64, schedule="constant", threads=1,
                             progress=False), seed=0, out=root / "orig")
    run_unlearning(root / "orig", method="retrain", forget="random:0.2", seed=0,
                   out=root / "ref", progress=False)
    return root / "orig", root / "ref"


def test_a_point_that_damages_the_model_is_never_chosen_and_results_are_rejudged():
    """The damage rule: a point whose validation accuracy fell below the original's by more
    than the gate's ta_drop limit is rejected however much it moved (a collapsed model moves a
    lot); judged() applies the rules to a stored grid without rerunning it."""
    from medunlearn.tuning import (
        ALL_REJECTED,
        TUNE_RULES,
        is_current,
        judged,
        rejects_as_damaging,
        val_drop_limit,
    )

    assert val_drop_limit(0.95, 0.96, 10_000) == pytest.approx(0.03)  # the gate's tolerance
    assert val_drop_limit(0.9, 0.9, 50) > 0.1  # widened for a small validation set
    grid = [  # collapsed: moved far, closest on nothing; light: did nothing; good: both fine
        {"options": {"a": 1}, "score": 0.010, "val_accuracy": 0.50, "moved": 2.0, "steps": 1},
        {"options": {"a": 2}, "score": 0.011, "val_accuracy": 0.97, "moved": 0.01, "steps": 1},
        {"options": {"a": 3}, "score": 0.012, "val_accuracy": 0.96, "moved": 0.6, "steps": 2}]
    result = {"grid": grid, "tolerance": 0.0, "min_move": 0.25,
              "do_nothing": {"val_accuracy": 0.97}, "warning": "stale"}
    out = judged(result, n_val=1000)
    assert out["chosen"] == {"a": 3} and "warning" not in out and out["rule"] == TUNE_RULES
    assert "damages the model" in out["grid"][0]["rejected"]
    assert "doing nothing" in out["grid"][1]["rejected"] and out["grid"][2]["rejected"] is None
    assert rejects_as_damaging({"val_drop": 0.01, "val_drop_limit": 0.03}) is None
    assert rejects_as_damaging({"score": 0.1}) is None  # not measured: not judged
    # no safe point at all: the closest is chosen, with the warning
    bad = judged(result | {"grid": grid[:2]}, n_val=1000)
    assert bad["chosen"] == {"a": 1} and bad["warning"] == ALL_REJECTED
    # a stored result judged under older rules is stale until re-judged
    assert not is_current(result, "ssd")


def test_tune_searches_any_option_grid(tiny_pair):
    orig, ref = tiny_pair
    res = tune_method(orig, method="ssd", forget="random:0.2", reference=ref, seed=0,
                      grid={"alpha": [1.0, 10.0], "retain_budget": [16, "none"]},
                      tolerance=0.0)
    assert [r["options"] for r in res["grid"]] == [
        {"alpha": 1.0, "retain_budget": 16}, {"alpha": 1.0, "retain_budget": None},
        {"alpha": 10.0, "retain_budget": 16}, {"alpha": 10.0, "retain_budget": None}]
    allowed = [r for r in res["grid"] if not r["rejected"]] or res["grid"]
    assert res["chosen"] == min(allowed, key=lambda r: (r["score"], r["steps"]))["options"]
    ref_scores = res["reference_scores"]
    for r in res["grid"]:  # the score is the mean of its four closeness terms
        assert 0.0 <= r["forget_prob_w1"] <= 1.0
        terms = (abs(r["forget_accuracy"] - ref_scores["forget_accuracy"]),
                 abs(r["val_accuracy"] - ref_scores["val_accuracy"]), 1 - r["agreement"],
                 r["forget_prob_w1"])
        assert r["score"] == pytest.approx(sum(terms) / 4)
    # a smaller retain budget means fewer importance batches: steps measure the cost
    assert res["grid"][0]["steps"] < res["grid"][1]["steps"]
    # the untouched original is scored like a point, and it did not move
    dn = res["do_nothing"]
    assert dn["moved"] == 0.0 and dn["agreement_original"] == 1.0
    assert 0.0 <= dn["score"] <= 1.0
    assert res["reference_scores"]["forget_shift"] > 0  # retraining moved
    for r in res["grid"]:
        assert r["moved"] >= 0 and 0.0 <= r["agreement_original"] <= 1.0
        damaged = r["val_drop"] > r["val_drop_limit"] + 1e-12
        assert (r["rejected"] is not None) == (r["moved"] < res["min_move"] or damaged)
        assert r["val_drop"] == pytest.approx(dn["val_accuracy"] - r["val_accuracy"])
    assert res["n_val"] == 64 or res["n_val"] > 0
    chosen = next(r for r in res["grid"] if r["options"] == res["chosen"])
    assert chosen["rejected"] is None or "warning" in res
    parsed = tomllib.loads(tune_snippet(res))
    assert parsed["breastmnist"]["ssd"]["alpha"] == res["chosen"]["alpha"]
    with pytest.raises(ConfigError, match="no option"):
        tune_method(orig, method="ssd", forget="random:0.2", reference=ref, seed=0,
                    grid={"lr": [0.1]})


def _record():
    pick = {"finetune": {"lr": 0.01, "epochs": 1, "retain_budget": None},
            "ssd": {"alpha": 3.0, "retain_budget": 1024}}
    return {
        "command": "python scripts/tune_defaults.py", "commit": "abc1234",
        "date": "2026-12-03", "defaults_version": 1,
        "recipe": {"forget": "random:0.1", "seed": 100, "tolerance": 0.003,
                   "default_from": "pneumoniamnist"},
        "results": {
            "pneumoniamnist": {"methods": {m: {"chosen": c, "score": 0.01}
                                           for m, c in pick.items()}},
            "breastmnist": {"methods": {
                "finetune": {"chosen": {"lr": 0.03, "epochs": 1, "retain_budget": None},
                             "score": 0.02},
                "ssd": {"chosen": pick["ssd"], "score": 0.0}}},
            "nih-cxr-1000": {"skipped": "the retrained reference predicts one class"},
        },
    }


def test_render_methods_toml_default_and_differing_sections():
    text = render_methods_toml(_record())
    data = tomllib.loads(text)
    assert data["version"] == 1
    assert data["default"]["finetune"] == {"lr": 0.01, "epochs": 1, "retain_budget": "none"}
    assert data["default"]["ssd"] == {"alpha": 3.0, "retain_budget": 1024}
    assert data["breastmnist"] == {"finetune": {"lr": 0.03}}  # only what differs
    assert "nih-cxr-1000" not in data and "# nih-cxr-1000: not tuned" in text
    assert "GENERATED" in text and "abc1234" in text
    assert render_methods_toml(_record()) == text  # deterministic
    bad = _record()
    bad["recipe"]["default_from"] = "dermamnist"
    with pytest.raises(ConfigError, match="no results for 'dermamnist'"):
        render_methods_toml(bad)


def test_published_defaults_are_exactly_the_tuning_record():
    """methods.toml is rendered from defaults/tuning.json; editing either by hand fails here.
    Regenerate both with `python scripts/tune_defaults.py`."""
    record = load_tuning_record()
    assert record is not None, "defaults/tuning.json is missing: run scripts/tune_defaults.py"
    shipped = resources.files("medunlearn").joinpath("defaults/methods.toml").read_text("utf-8")
    assert render_methods_toml(record) == shipped, (
        "defaults/methods.toml differs from what defaults/tuning.json says; run "
        "`python scripts/tune_defaults.py --render-only` (or retune)")
    spec = load_tuning_spec()
    assert record["grids"] == spec["grid"], (
        "defaults/tuning.toml's search spaces changed since the record was made; retune")
    assert {k: v for k, v in spec["recipe"].items() if k != "datasets"} == record["recipe"]
    assert record.get("criterion") == TUNE_CRITERION, (
        "the tuning criterion changed since the record was made; retune")
    base = record["results"][spec["recipe"]["default_from"]]["methods"]
    assert set(base) == set(method_names()) - set(EXACT_METHODS), "every method is tuned"
    for flag, entry in record["results"].items():
        for method, res in entry.get("methods", {}).items():
            # tuned with the method's current algorithm
            assert res.get("revision", 0) == get_method_class(method).revision, (
                f"{method} was revised since it was tuned on {flag}; retune it")
            # the chosen point is one of the grid's rows, and the best within tolerance
            rows = res["grid"]
            assert res["chosen"] in [r["options"] for r in rows], (flag, method)
            assert choose(rows, spec["recipe"]["tolerance"],
                          min_move=res.get("min_move"))["options"] == res["chosen"]
            # and it is what the method resolves to for that dataset
            resolved = default_options(method, flag)
            for k, v in res["chosen"].items():
                assert resolved.get(k, "none" if v is None else v) == (
                    "none" if v is None else v), (flag, method, k)


def test_tune_cli_takes_grids_and_writes_json(tiny_pair, tmp_path, capsys):
    import json

    from medunlearn.cli import main

    orig, ref = tiny_pair
    out = tmp_path / "ssd.json"
    code = main(["tune", "--model", str(orig), "--method", "ssd", "--forget", "random:0.2",
                 "--seed", "0", "--reference", str(ref), "--grid", "alpha=1,10",
                 "--grid", "retain_budget=16,none", "--tolerance", "0", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    result = json.loads(out.read_text())
    assert len(result["grid"]) == 4 and result["tolerance"] == 0
    assert "retain_budget" in text and "chosen: alpha=" in text
    code = main(["tune", "--model", str(orig), "--method", "ssd", "--forget", "random:0.2",
                 "--seed", "0", "--reference", str(ref), "--grid", "alpha", "--out",
                 str(tmp_path / "x.json")])
    assert code == 2 and "key=v1,v2" in capsys.readouterr().err


def test_tune_with_shadows_records_the_paired_test_and_rejects_its_fails(tiny_pair, tmp_path):
    from medunlearn.runs.shadows import shadows_for_run

    orig, ref = tiny_pair
    shadows_for_run(orig, k=4, out=tmp_path / "sh", seed=0, progress=False)
    res = tune_method(orig, method="ssd", forget="random:0.2", reference=ref, seed=0,
                      grid={"alpha": [1.0, 10.0]}, tolerance=0.0, shadows=tmp_path / "sh")
    dn = res["do_nothing"]
    assert dn["forget_effect"] in ("fail", "cannot say")  # the original never passes it
    for r in res["grid"]:
        assert r["forget_effect"] in ("pass", "fail", "cannot say")
        if r["forget_effect"] == "fail":
            assert "still look remembered" in r["rejected"]
    summary = summarize(res)
    assert all("forget_effect" in r for r in summary["grid"])


def _tune_defaults_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "tune_defaults.py"
    spec = importlib.util.spec_from_file_location("tune_defaults_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_reports_how_far_each_default_moved_before_and_after_a_retune():
    """``tune_defaults.py --compare``: the old default is looked up in the new grid, so both
    points are measured by the same run; a point below the do-nothing threshold is flagged."""
    light = {"lr": 0.01, "epochs": 1}
    strong = {"lr": 0.03, "epochs": 2}
    grid = [{"options": light, "score": 0.01, "moved": 0.10, "agreement_original": 0.99,
             "agreement": 0.97, "steps": 8},
            {"options": strong, "score": 0.012, "moved": 0.80, "agreement_original": 0.95,
             "agreement": 0.96, "steps": 16}]
    new = {"results": {
        "pneumoniamnist": {"methods": {"finetune": {
            "chosen": strong, "grid": grid, "min_move": 0.25,
            "do_nothing": {"agreement": 0.975}}}},
        "nih-cxr-1000": {"skipped": "the retrained reference predicts one class"}}}
    old = {"results": {"pneumoniamnist": {"methods": {"finetune": {"chosen": light}}}}}
    table = _tune_defaults_script().compare(new, old)
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    assert ("| pneumoniamnist | original (no unlearning) | - | 0.00 | 1.00 | 0.97 | does nothing |"
            in table)
    ft = rows["finetune"]
    assert "lr=0.01, epochs=1 -> **lr=0.03, epochs=2**" in ft
    assert "0.10 -> 0.80" in ft and "0.99 -> 0.95" in ft and "does nothing -> no" in ft
    assert "skipped: the retrained reference predicts one class" in rows["all"]
    same = _tune_defaults_script().compare(new, {"results": {"pneumoniamnist": {
        "methods": {"finetune": {"chosen": strong}}}}})
    assert "| finetune | lr=0.03, epochs=2 | 0.80 | 0.95 | 0.96 | no |" in same

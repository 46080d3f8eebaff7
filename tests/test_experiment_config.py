"""Study files: parsing, validation errors, and how a grid expands into shared jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from medunlearn.experiments.config import (
    ExperimentConfigError,
    forget_ratio,
    load_experiment,
    parse_experiment,
)

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "experiments"

BASE = {
    "datasets": [{"dataset": "breastmnist", "view": "binary"}],
    "forget": ["random:0.2", 0.5],
    "methods": ["retrain", "finetune", {"name": "salun", "options": {"epochs": 1},
                                        "label": "salun-1ep"}],
    "augment": [False, True],
    "seeds": [0, 1],
    "data": {"train_limit": 120, "eval_limit": 60},
    "model": {"width": 8},
    "train": {"epochs": 1},
}


def test_grid_expands_into_shared_originals_references_and_cells():
    cfg = parse_experiment(BASE)
    originals, references, cells = cfg.plan()
    assert cfg.augment == ("none", "basic")
    assert cfg.forget == ("random:0.2", "random:0.5")
    assert len(originals) == 1 * 2 * 2  # datasets x augment x seeds
    assert len(references) == len(originals) * 2  # x forget
    assert len(cells) == len(references) * 3  # x methods
    # keys are unique and every method of one (original, forget) shares one reference
    assert len({c.key for c in cells}) == len(cells)
    assert len({r.key for r in references}) == len(references)
    assert len({c.reference.key for c in cells}) == len(references)
    # retrain without options reuses the reference folder instead of retraining twice
    retrain = [c for c in cells if c.method.name == "retrain"]
    assert all(c.folder == c.reference.folder for c in retrain)
    assert cells[-1].method.display == "salun-1ep"
    assert cells[-1].method.options_dict == {"epochs": 1}
    # the original is keyed by what determines it; threads or progress do not matter
    assert originals[0].train.progress is False
    again = parse_experiment(BASE | {"threads": 1})
    assert [o.key for o in again.originals()] == [o.key for o in originals]
    assert [c.key for c in again.cells()] == [c.key for c in cells]
    # changing the training recipe changes every key
    other = parse_experiment(BASE | {"train": {"epochs": 2}})
    assert not {o.key for o in other.originals()} & {o.key for o in originals}


def test_revising_a_method_reruns_its_cells_only(monkeypatch):
    from medunlearn.methods.base import get_method_class, revision_field

    assert revision_field(get_method_class("ssd")) == {"revision": 1}  # equal-size batches
    assert revision_field(get_method_class("finetune")) == {}  # unrevised: keys as before
    before = {(c.method.display, c.reference.key): c.key for c in parse_experiment(BASE).cells()}
    monkeypatch.setattr(get_method_class("finetune"), "revision", 1)
    after = {(c.method.display, c.reference.key): c.key for c in parse_experiment(BASE).cells()}
    changed = {cell[0] for cell, key in after.items() if before[cell] != key}
    assert changed == {"finetune"}


def test_forget_ratio():
    assert forget_ratio("random:0.2") == 0.2
    assert forget_ratio("random:0.05:stratified") == 0.05
    assert forget_ratio("class:1") is None


@pytest.mark.parametrize("change, message", [
    ({"optimiser": "adam"}, "Unknown key(s) 'optimiser'"),
    ({"methods": ["finetune", "forgetful"]}, "unknown unlearning method 'forgetful'; valid "
                                             "methods: retrain, finetune"),
    ({"datasets": ["breastmnst"]}, "Did you mean 'breastmnist'"),
    ({"datasets": [{"dataset": "breastmnist", "colour": 1}]}, "valid keys: dataset, view"),
    ({"forget": ["random:1.5"]}, "between 0 and 1"),
    ({"forget": ["oldest:0.2"]}, "unknown forget selection"),
    ({"augment": ["heavy"]}, "unknown policy 'heavy'"),
    ({"train": {"epochz": 3}}, "Unknown option(s) epochz in train"),
    ({"data": {"augment": "none"}}, "Unknown key(s) 'augment' in data"),
    ({"seeds": [-1]}, "non-negative integers"),
    ({"methods": ["finetune", "finetune"]}, "Methods listed twice: finetune"),
    ({"methods": [{"name": "finetune", "options": {"lr_typo": 1}}]}, "lr_typo"),
])
def test_bad_configs_raise_clear_errors(change, message):
    with pytest.raises(ExperimentConfigError) as err:
        parse_experiment(BASE | change)
    assert message in str(err.value)


def test_missing_sections_and_files(tmp_path):
    with pytest.raises(ExperimentConfigError, match="needs a 'methods' list"):
        parse_experiment({k: v for k, v in BASE.items() if k != "methods"})
    with pytest.raises(ExperimentConfigError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [breastmnist\n")
    with pytest.raises(ExperimentConfigError, match="Cannot parse"):
        load_experiment(bad)
    with pytest.raises(ExperimentConfigError, match=r"\.yaml, \.yml or \.toml"):
        load_experiment(_write(tmp_path / "x.json", "{}"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_toml_study(tmp_path):
    path = _write(tmp_path / "study.toml", """
name = "toml-study"
forget = ["random:0.2"]
methods = ["retrain", "finetune"]
seeds = [0, 1, 2]
[[datasets]]
dataset = "pneumoniamnist"
view = "binary"
[train]
epochs = 1
""")
    cfg = load_experiment(path)
    assert cfg.name == "toml-study"
    assert len(cfg.cells()) == 2 * 3
    assert cfg.datasets[0].name == "pneumoniamnist-binary"


@pytest.mark.parametrize("name, cells", [
    ("tiny.yaml", 4),
    ("clinical_risk.yaml", 2 * 2 * 13 * 3),
    ("forget_size.yaml", 2 * 6 * 13 * 3),
    ("augmentation.yaml", 2 * 2 * 13 * 3),
])
def test_study_files_parse(name, cells):
    cfg = load_experiment(STUDIES / name)
    assert len(cfg.cells()) == cells
    if name != "tiny.yaml":
        assert {m.name for m in cfg.methods} >= {"retrain", "finetune", "random-label", "salun",
                                                  "salun-cra"}
        assert len(cfg.seeds) == 3


def test_cli_reports_bad_study_and_lists_jobs(tmp_path, capsys):
    from medunlearn.cli import main

    bad = _write(tmp_path / "bad.yaml", "datasets: [breastmnist]\nforget: [0.2]\n"
                                        "methods: [finetune, unlearn-everything]\n")
    assert main(["experiment", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown unlearning method 'unlearn-everything'; valid methods:" in err
    assert not (tmp_path / "r").exists()
    assert main(["experiment", str(STUDIES / "tiny.yaml"), "--out", str(tmp_path / "r"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 original model(s), 1 retrained reference(s), 4 cell(s)" in out
    assert out.count("breastmnist-binary-aug_none-random_0.2-") == 4
    assert main(["experiment", str(STUDIES / "tiny.yaml"), "--out", str(tmp_path / "r"),
                 "--backend", "spark"]) == 2
    capsys.readouterr()
    assert main(["experiment", str(STUDIES / "clinical_risk.yaml"), "--out",
                 str(tmp_path / "r"), "--seeds", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "x 1 seed(s)" in out and "-s1-" in out and "-s0-" not in out
    assert main(["experiment", str(STUDIES / "tiny.yaml"), "--out", str(tmp_path / "r"),
                 "--seeds", "x"]) == 2


def test_studies_share_models_and_cells_in_one_results_folder():
    clinical, size, aug = (load_experiment(STUDIES / f"{n}.yaml")
                           for n in ("clinical_risk", "forget_size", "augmentation"))
    originals = {o.key for s in (clinical, size, aug) for o in s.originals()}
    assert len(originals) == 2 * 2 * 3  # datasets x {none, basic} x seeds
    # forget_size covers clinical_risk's 20% and 50% cells with the same keys
    assert {c.key for c in clinical.cells()} <= {c.key for c in size.cells()}
    total = len({c.key for s in (clinical, size, aug) for c in s.cells()})
    assert total == 2 * 3 * 13 * (6 + 1)  # basic: 6 ratios (0.1 shared); none: 0.1


def test_cell_keys_follow_the_published_defaults(monkeypatch):
    """A cell's key holds every resolved option, so new defaults/methods.toml values rerun the
    cells they change (and only those) instead of reusing results of the old values."""
    import medunlearn.methods.base as unlearning

    def keys():
        return {(c.reference.key, c.method.display): c.key
                for c in parse_experiment(BASE).plan()[2]}

    before = keys()
    table = unlearning.load_defaults()
    changed = {**table, "breastmnist": {**table.get("breastmnist", {}),
                                        "finetune": {"lr": 0.123}}}
    monkeypatch.setattr(unlearning, "load_defaults", lambda: changed)
    after = keys()
    assert before.keys() == after.keys()
    moved = {k for k in before if before[k] != after[k]}
    assert moved and {m for _, m in moved} == {"finetune"}
    # a user option that pins the value makes the default irrelevant
    bm = table.get("breastmnist", {})
    other = {**table, "breastmnist": {**bm, "salun": {**bm.get("salun", {}), "epochs": 3}}}
    monkeypatch.setattr(unlearning, "load_defaults", lambda: other)
    pinned = {k: v for k, v in keys().items() if k[1] == "salun-1ep"}
    assert pinned == {k: v for k, v in before.items() if k[1] == "salun-1ep"}

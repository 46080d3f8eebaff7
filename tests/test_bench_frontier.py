"""The frontier benchmark's summary: targets and the independent-retraining noise floor."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import load_bench

from medunlearn.experiments.config import parse_experiment


@pytest.fixture(scope="module")
def bf():
    return load_bench("bench_frontier")


def _row(label, seed, gap, seconds, *, gr=0.1, fnr=0.01, gate=True, method=None):
    return {"forget": "random:0.1", "seed": seed, "label": label, "method": method or label,
            "average_gap_pp": gap, "unlearn_seconds": seconds, "retrain_seconds": 100.0,
            "global_risk": gr, "fnr": fnr, "gate_passed": gate, "gate_reasons": []}


def test_floor_is_an_independent_retraining_cell(bf):
    cfg = parse_experiment(bf.study(("random:0.1",), (0,), ("retrain", "ssd"), False),
                           source="test")
    cells = cfg.plan()[2]
    floor = [c for c in cells if c.method.display == bf.FLOOR]
    assert len(floor) == 1 and not floor[0].reuses_reference  # trained, not the reference
    assert floor[0].method.options_dict == {"seed_offset": bf.FLOOR_SEED_OFFSET}
    plain = parse_experiment(bf.study(("random:0.1",), (0,), ("retrain", "ssd"), False,
                                      floor=False), source="test")
    assert [c.method.display for c in plain.plan()[2]] == ["retrain", "ssd"]


def test_summary_targets_and_floor_line(bf):
    rows = []
    for seed in (0, 1):
        rows += [_row("retrain", seed, 0.0, 100.0),
                 _row("newton", seed, 0.8, 1.0),                  # meets target 1
                 _row("ssd", seed, 0.88, 8.0),                     # close but too slow
                 _row("salun-cra", seed, 1.4, 6.0, fnr=0.015),     # meets target 2
                 _row("finetune", seed, 2.0, 2.0, gate=seed == 0),
                 _row(bf.FLOOR, seed, 0.85 + 0.1 * seed, 101.0, method="retrain")]
    summary = bf.summarize(rows)
    by = {s["method"]: s for s in summary}
    assert by[bf.FLOOR]["gap"] == pytest.approx(0.9) and by[bf.FLOOR]["n"] == 2
    assert [s["method"] for s in summary if bf.meets_main(s)] == ["newton"]
    assert bf.meets_cra(by["salun-cra"])
    text = bf.render(summary, results=Path("r"), seeds=(0, 1), wall=60.0, quick=False,
                     figure_path=None)
    assert "Target 1" in text and "**newton**" in text
    assert "Target 2" in text and "**met**" in text
    # at or below the floor (0.9 pp) with the gate passed in every seed: ssd and newton
    assert "0.90 ± 0.07 pp from the reference" in text
    assert "passed in every seed): ssd, newton." in text


def test_do_nothing_row_is_summarised_and_never_a_candidate(bf, tmp_path):
    """The untouched original (added to every grid by the runner) is summarised at no cost,
    never meets a target, and names the methods whose gap is no better than doing nothing."""
    from medunlearn.experiments.grid import ORIGINAL_LABEL, ORIGINAL_METHOD

    cfg = parse_experiment(bf.study(("random:0.1",), (0, 1), ("retrain", "ssd"), False),
                           source="test")
    assert [c.method.display for c in cfg.baselines()] == [ORIGINAL_LABEL] * 2
    rows = []
    for seed in (0, 1):
        nothing = _row(ORIGINAL_LABEL, seed, 0.9 + 0.02 * seed, None, method=ORIGINAL_METHOD)
        rows += [_row("retrain", seed, 0.0, 100.0), nothing,
                 _row("newton", seed, 0.5, 1.0),    # clearly better than doing nothing
                 _row("ssd", seed, 0.9, 1.0)]       # within the original's spread: no better
    summary = bf.summarize(rows)
    by = {s["method"]: s for s in summary}
    base = by[ORIGINAL_LABEL]
    assert base["ratio"] == 0.0 and base["gap"] == pytest.approx(0.91) and base["gate"] == 2
    assert not bf.meets_main(base)  # gap 0.91 <= 1 pp at no cost: still not a method
    assert bf.no_better_than_nothing(summary, "random:0.1") == ["ssd"]
    text = bf.render(summary, results=Path("r"), seeds=(0, 1), wall=60.0, quick=False,
                     figure_path=None)
    assert ("Doing nothing: the untouched original is 0.91 ± 0.01 pp from the reference, and "
            "the safety gate passed it in 2/2 seeds (a passed gate there does not show that "
            "anything was forgotten). No better than doing nothing by the average gap: ssd."
            ) in text
    png = bf.figure(summary, tmp_path / "frontier.png")
    assert png.read_bytes().startswith(b"\x89PNG")


def test_fold_models_count_towards_a_requests_cost(bf, tmp_path):
    """oracle-match reads K fold models that must be rebuilt after every request: the
    frontier times the request with their rebuild, and the targets judge that total."""
    import json

    original = tmp_path / "original"
    (original / "kfold" / "members").mkdir(parents=True)
    for j in range(5):
        (original / "kfold" / "members" / f"k{j:02d}.json").write_text(
            json.dumps({"train_seconds": 40.0}))
    rows = [_row("retrain", 0, 0.0, 100.0),
            _row("oracle-match", 0, 0.5, 2.0) | {"original_dir": str(original)},
            _row("newton", 0, 0.5, 2.0) | {"original_dir": str(original)}]
    by = {s["method"]: s for s in bf.summarize(rows)}
    assert by["oracle-match"]["ratio"] == pytest.approx(0.02)
    assert by["oracle-match"]["fold_ratio"] == pytest.approx(2.0)  # 5 x 40 s over 100 s
    assert by["newton"]["fold_ratio"] is None  # reads no fold models
    assert bf.meets_main(by["newton"]) and not bf.meets_main(by["oracle-match"])
    text = bf.render(list(by.values()), results=Path("r"), seeds=(0,), wall=1.0, quick=False,
                     figure_path=None)
    assert "| 2.0 ± 0.0 (+ 200% fold models) |" in text and "rebuild of the fold models" in text

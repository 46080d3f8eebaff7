"""The per-example bench's method entries (options beside the defaults) and its report of the
gate over every unlearned run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import load_bench


@pytest.fixture(scope="module")
def bq():
    return load_bench("bench_forgetting_quality")


def test_entries_name_a_method_and_its_options(bq):
    assert bq.parse_entry("noise-repair") == ("noise-repair", {})
    assert bq.parse_entry("noise-repair@epochs=3,noise=0.7") == \
        ("noise-repair", {"epochs": 3, "noise": 0.7})
    with pytest.raises(SystemExit, match="give options after '@'"):
        bq.parse_entry("noise-repair@")
    assert bq.gated("noise-repair", "all") and bq.gated("original", "noise-repair,original")
    assert bq.gated("noise-repair@epochs=3,noise=0.5",
                    "noise-repair;noise-repair@epochs=3,noise=0.5")
    assert not bq.gated("noise-repair@epochs=3", "noise-repair") and not bq.gated("x", "")
    assert bq.label_of({"method": "finetune"}) == "finetune"  # rows of older benches
    assert bq.label_of({"method": "finetune", "label": "finetune@epochs=2"}) == \
        "finetune@epochs=2"


def _row(label, seed, *, ratio, gate, passed=None, method=None):
    row = {"n": 16, "seed": seed, "method": method or label.partition("@")[0], "label": label,
           "score": 0.1, "ci": [0.09, 0.11], "null": 0.2, "ratio": ratio, "ulira": 0.6,
           "capped": 0.0, "peaky": 0.0, "identical": False, "u_secs": [2.0], "r_secs": [40.0],
           "gate": gate, "attack": "pass", "mia": 0.1, "mia_ref": 0.1, "fnr": 0.02,
           "fnr_ref": 0.02, "fnr_orig": 0.01, "over": [], "wall": 60.0, "dataset": "d",
           "precision": "bf16", "forget_count": 70}
    if passed is not None:
        row |= {"runs_gated": 16, "runs_passed": passed, "runs_gate_reasons": {}}
    return row


def test_render_keeps_variants_apart_and_counts_gated_runs(bq):
    rows = [_row("noise-repair", 0, ratio=0.6, gate=True, passed=14) | {"spread": 0.5,
                                                                          "shift": -0.25},
            _row("noise-repair", 1, ratio=0.4, gate=False, passed=9) | {"spread": 0.7,
                                                                        "shift": 0.25},
            _row("noise-repair@epochs=3", 0, ratio=0.7, gate=True, passed=16),
            _row("noise-repair@epochs=3", 1, ratio=0.5, gate=True),  # not gated run by run
            _row("original", 0, ratio=0.0, gate=False, passed=0),
            {"kind": bq.RETRAINED, "method": bq.RETRAINED, "seed": 0, "n": 16,
             "runs_gated": 15, "runs_passed": 13,
             "runs_gate_reasons": {"global_risk_vs_original": 2, "ta_drop": 1}}]
    args = SimpleNamespace(quick=False, model=None, forget="random:0.1", note=None)
    text = bq.render(rows, args=args, work=Path("W"), seeds=[0, 1], ns=[16])
    lines = text.splitlines()
    per_seed = [ln for ln in lines if ln.startswith("| 16 | 0 | noise-repair |")]
    assert len(per_seed) == 1 and "| pass (14/16 runs) |" in per_seed[0]
    assert "| 0.600 | 0.50; -0.25 | 0% (0%) |" in per_seed[0]  # U-LiRA, spread; shift, cap
    assert "| 0.600 | - | 0% (0%) |" in next(  # a row kept from before the column
        ln for ln in lines if ln.startswith("| 16 | 0 | noise-repair@epochs=3 |"))
    assert "| FAIL (9/16 runs) |" in next(ln for ln in lines
                                          if ln.startswith("| 16 | 1 | noise-repair |"))
    assert "| FAIL (one model) |" in next(ln for ln in lines
                                          if ln.startswith("| 16 | 0 | original |"))
    summary = {ln.split(" | ")[1]: ln for ln in lines if ln.startswith("| 16 | ")
               and ln.count("|") == 11}
    assert "| 1/2 (23/32 runs) |" in summary["noise-repair"]
    assert "| 0.60 ± 0.14; 0.00 ± 0.35 |" in summary["noise-repair"]
    assert "| 2/2 |" in summary["noise-repair@epochs=3"]  # one seed not gated run by run
    assert summary["noise-repair@epochs=3"].split(" | ")[-1] == "2/2 |"  # ratio >= 0.5 in
    # exact retraining's pass rate: its own table, not a method row
    assert "| 16 | 0 | 13/15 | global_risk_vs_original 2, ta_drop 1 |" in lines
    assert not [ln for ln in lines if ln.startswith(f"| 16 | 0 | {bq.RETRAINED} |")]


def test_bench_end_to_end_on_tiny_data(bq, synth_root, tmp_path):
    """The bench on a tiny synthetic original, N = 3: a method with options, the do-nothing row
    and exact retraining's own gate row, all evaluated the same way (evaluate_deployed); the
    second call reuses every row."""
    import json

    from medunlearn.config import DataSource, ModelConfig, TrainConfig
    from medunlearn.runs import run_training

    model = tmp_path / "original"  # the synthetic files fail medmnist's MD5: no --quick
    run_training(DataSource(dataset="breastmnist", data_root=str(synth_root), download=False,
                            verify_md5=False),
                 ModelConfig(width=8), TrainConfig(epochs=2, progress=False, threads=1),
                 seed=0, out=model)
    work, bench = tmp_path / "work", tmp_path / "BENCH.md"
    entry = "noise-repair@match_original=true"
    argv = ["--model", str(model), "--work", str(work), "--n", "3",
            "--methods", f"{entry};original",
            "--gate-runs", f"{entry};original;retrained", "--benchmarks", str(bench),
            "--section", "tiny"]
    assert bq.main(argv) == 0
    rows = json.loads((work / bq.ROWS_FILE).read_text())
    by = {r.get("label", r["method"]): r for r in rows.values()}
    assert set(by) == {entry, "original", "retrained"}
    assert by["original"]["score"] == 0.0 and by["original"]["gate"] is False
    assert by["original"]["runs_gated"] == 1 and by["original"]["runs_passed"] == 0
    assert "forget_changed" in by["original"]["runs_gate_reasons"]
    assert by[entry]["options"] == {"match_original": True} and by[entry]["runs_gated"] == 3
    assert by[entry]["runs_passed"] == 0 and "| 3 | 0 | 0/2 |" in bench.read_text()
    assert by["retrained"]["runs_gated"] == 2  # the other N - 1 retrained models
    assert (work / "fq-seed-0" / entry / "seed-0" / "model.safetensors").is_file()
    text = bench.read_text()
    assert f"| {entry} |" in text and "FAIL (one model)" in text and "(0/3 runs)" in text
    before = (work / bq.ROWS_FILE).read_bytes()
    assert bq.main(argv) == 0  # every row kept
    assert (work / bq.ROWS_FILE).read_bytes() == before


def test_published_figures_are_the_served_options_averaged_over_seeds(bq, tmp_path):
    """Only rows at the options the registry serves a method with are published (the registry's
    Newton step is its final-layer scope), averaged over seeds; the original, exact retraining
    and other datasets' figures are left alone; the same rows give the same bytes."""
    import json

    path = tmp_path / "figures.json"
    path.write_text(json.dumps({"datasets": {"other": "other"},
                                "figures": {"other": {"finetune": {"ratio": 0.2}}}}))
    rows = [_row("noise-repair", 0, ratio=0.6, gate=True, passed=14),
            _row("noise-repair", 1, ratio=0.4, gate=False),
            _row("noise-repair@epochs=3", 0, ratio=0.9, gate=True),
            _row("newton", 0, ratio=0.3, gate=True),
            _row("newton@scope=head", 0, ratio=0.1, gate=True),
            _row("original", 0, ratio=0.0, gate=False),
            {"kind": bq.RETRAINED, "method": bq.RETRAINED, "seed": 0, "n": 16}]
    for r in rows:
        r["options"] = bq.parse_entry(r.get("label", r["method"]))[1]
        r["resolved"] = {"noise": 0.5, "epochs": 2, "retain_budget": None}
    done = bq.publish_figures(path, rows, section="fq", forget="random:0.1", n=16)
    assert done == ["newton", "noise-repair"]
    record = json.loads(path.read_text())
    assert record["figures"]["other"] == {"finetune": {"ratio": 0.2}}
    assert record["datasets"] == {"other": "other", "d": "d"}
    nr = record["figures"]["d"]["noise-repair"]
    assert nr["ratio"] == 0.5 and [s["seed"] for s in nr["seeds"]] == [0, 1]
    assert nr["seeds"][0]["runs_passed"] == 14 and "runs_gated" not in nr["seeds"][1]
    assert nr["options"] == "epochs=2, noise=0.5, retain_budget=none" and nr["section"] == "fq"
    assert record["figures"]["d"]["newton"]["ratio"] == 0.1  # the head-scope row
    first = path.read_bytes()
    bq.publish_figures(path, rows, section="fq", forget="random:0.1", n=16)
    assert path.read_bytes() == first
    with pytest.raises(SystemExit, match="two rows of noise-repair on d for training seed 0"):
        bq.publish_figures(path, rows + rows[:1], section="fq", forget="random:0.1", n=16)
    assert path.read_bytes() == first  # nothing written
    tb = [_row("salun", 0, ratio=0.1, gate=True) | {"dataset": "tb-cxr", "options": {},
                                                      "resolved": {"augment": True}}]
    bq.publish_figures(path, tb, section="fq_tb", forget="random:0.1", n=16)
    record = json.loads(path.read_text())
    assert record["datasets"]["tb"] == record["datasets"]["tb-cxr"] == "tb-cxr"
    assert record["figures"]["tb-cxr"]["salun"]["options"] == "augment=true"
    with pytest.raises(SystemExit, match="smoke run"):
        bq.main(["--quick", "--publish-figures", str(path)])

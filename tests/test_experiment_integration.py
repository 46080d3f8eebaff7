"""The real pipeline on a tiny BreastMNIST grid: the ``experiment`` command killed with SIGKILL
mid-grid and resumed, the report of its results, and the Ray backend giving identical rows.

Tiny settings (experiments/tiny.yaml): 120 training images, 60 for validation and test, width 8,
one epoch. Marked ``integration``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medunlearn.cli import main
from medunlearn.experiments import parse_experiment, run_experiment
from medunlearn.experiments.store import ResultsStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
METHODS = ["retrain", "finetune", "salun-cra"]
ROWS = ["original", *METHODS]  # the do-nothing row ("original (no unlearning)") and the methods


def _study(tmp: Path, root: Path, methods: list[str]) -> Path:
    raw = yaml.safe_load((REPO / "experiments" / "tiny.yaml").read_text())
    raw["methods"] = methods
    raw["data_root"] = str(root)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _count(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # table not created yet
        return 0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medunlearn.cli", *args]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, medmnist_root):
    """Run the grid with the CLI, kill -9 it after the first row, resume it; return facts."""
    tmp = tmp_path_factory.mktemp("grid")
    study = _study(tmp, medmnist_root, METHODS)
    out = tmp / "results"
    db = out / "results.sqlite"
    env = os.environ | {"MEDMNIST_ROOT": str(medmnist_root)}
    proc = subprocess.Popen(_cli("experiment", str(study), "--out", str(out), "-q"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while _count(db) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed = {"returncode": proc.returncode, "rows": _count(db), "output": proc.stdout.read()}
    originals = [p for p in (out / "models" / "original").iterdir() if not p.name.startswith(".")]
    created = json.loads((originals[0] / "config.json").read_text())["created"]
    t0 = time.perf_counter()
    again = subprocess.run(_cli("experiment", str(study), "--out", str(out), "-q"), env=env,
                           capture_output=True, text=True, timeout=600)
    return {"out": out, "killed": killed, "created": created, "resume": again,
            "resume_seconds": time.perf_counter() - t0}


def test_kill_minus_9_mid_grid_then_resume(killed_and_resumed):
    k = killed_and_resumed
    out: Path = k["out"]
    assert k["killed"]["returncode"] == -signal.SIGKILL, k["killed"]["output"]
    assert 1 <= k["killed"]["rows"] < len(ROWS)
    assert k["resume"].returncode == 0, k["resume"].stdout + k["resume"].stderr
    assert f"{k['killed']['rows']} earlier" in k["resume"].stdout
    con = sqlite3.connect(out / "results.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    keys = [r[0] for r in con.execute("SELECT key FROM results")]
    con.close()
    assert len(keys) == len(set(keys)) == len(ROWS)
    # the original and the reference were trained once and reused after the kill
    for kind in ("original", "reference"):
        folders = [p for p in (out / "models" / kind).iterdir() if not p.name.startswith(".")]
        assert len(folders) == 1
    original = next(p for p in (out / "models" / "original").iterdir()
                    if not p.name.startswith("."))
    assert json.loads((original / "config.json").read_text())["created"] == k["created"]
    assert not [p for p in out.rglob(".*") if ".staging-" in p.name]
    # every row is complete
    with ResultsStore(out) as store:
        rows = {r["method"]: r for r in store.rows()}
    assert set(rows) == set(ROWS)
    for r in rows.values():
        for col in ("UA", "RA", "TA", "test_auc", "mia_efficacy", "attack_auc", "fnr", "fpr",
                    "global_risk", "original_fnr", "average_gap_pp", "retrain_seconds") + (
                        ("unlearn_seconds",) if r["method"] != "original" else ()):
            assert r[col] is not None, (r["method"], col)
        assert Path(r["run_dir"], "model.safetensors").is_file()
        assert r["gate_passed"] in (True, False)
        assert "bias.difficulty.forget.model.easy.accuracy" in r["metrics"]
    assert rows["retrain"]["average_gap_pp"] == 0.0 and rows["retrain"]["speedup"] == 1.0
    assert rows["retrain"]["run_dir"] == rows["retrain"]["reference_dir"]
    assert rows["finetune"]["run_dir"] != rows["finetune"]["reference_dir"]
    # the do-nothing row: the original itself, evaluated against the reference like a method
    nothing = rows["original"]
    assert nothing["label"] == "original (no unlearning)"
    assert nothing["run_dir"] == nothing["original_dir"] and nothing["unlearn_seconds"] is None
    assert nothing["fnr"] == nothing["original_fnr"] and nothing["fnr_change"] == 0.0
    assert nothing["metrics"]["counts.forget"] == rows["finetune"]["metrics"]["counts.forget"]
    assert nothing["average_gap_pp"] >= 0.0 and nothing["gate_passed"] in (True, False)
    assert not (out / "runs").exists() or not any("original" in p.name
                                                  for p in (out / "runs").iterdir())
    assert len(list((out / "logs" / "cell").glob("*.log"))) == len(ROWS)
    assert len((out / "results.csv").read_text().splitlines()) == len(ROWS) + 1


def test_report_of_real_results(killed_and_resumed, tmp_path):
    assert main(["report", str(killed_and_resumed["out"]), "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.count("<table class='results'") == 1
    for m in [*METHODS, "original (no unlearning)"]:
        assert f"data-method='{m}'" in page
    assert page.count("<img ") == 3  # Pareto, FNR change, difficulty (one ratio: no ratio plots)
    md = (tmp_path / "report.md").read_text()
    assert re.search(r"\| salun-cra( ∅)? \| 1 \|", md)  # ∅: its gap is no better than doing nothing
    assert "| original (no unlearning) | 1 |" in md


def test_ray_backend_gives_the_same_rows(killed_and_resumed, tmp_path, medmnist_root,
                                         monkeypatch):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'medunlearn[ray]')")
    monkeypatch.setenv("MEDMNIST_ROOT", str(medmnist_root))
    cfg = parse_experiment(yaml.safe_load(_study(tmp_path, medmnist_root,
                                                 ["retrain", "finetune"]).read_text()))
    out = tmp_path / "ray-results"
    # start from the trained original (saves a training run); Ray builds the reference, then
    # runs both cells in parallel
    src = killed_and_resumed["out"] / "models" / "original"
    shutil.copytree(src, out / "models" / "original")
    try:
        summary = run_experiment(cfg, out, backend="ray", num_cpus=2, progress=False)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert summary.ok and summary.completed == 3  # two methods and the do-nothing row
    assert len(list((out / "logs" / "reference").glob("*.log"))) == 1
    assert not (out / "logs" / "original").exists()  # the copied original was reused
    with ResultsStore(out) as store:
        ray_rows = {r["key"]: r for r in store.rows()}
    with ResultsStore(killed_and_resumed["out"]) as store:
        local_rows = {r["key"]: r for r in store.rows()}
    assert set(ray_rows) <= set(local_rows)  # same cells, same keys
    for key, r in ray_rows.items():
        for col in ("UA", "RA", "TA", "fnr", "global_risk", "average_gap_pp"):
            assert r[col] == pytest.approx(local_rows[key][col]), col
    # the cells ran in Ray worker processes, not in this one
    for log in (out / "logs" / "cell").glob("*.log"):
        pid = int(log.read_text().split("(pid ")[1].split(")")[0])
        assert pid != os.getpid()


def test_study_with_the_per_example_check_reports_a_column_and_a_figure(tmp_path, medmnist_root):
    """``evaluation: {forgetting_quality: 3}``: every cell carries the score, the methods of a
    setting share the N retrained models, and the report shows the column and the figure."""
    from medunlearn.experiments import load_experiment
    from medunlearn.experiments.report import write_report

    raw = yaml.safe_load((REPO / "experiments" / "tiny.yaml").read_text())
    raw.update(methods=["finetune", "newton"], data_root=str(medmnist_root), seeds=[0],
               evaluation={"forgetting_quality": 3})
    raw["forget"] = raw["forget"][:1]
    path = tmp_path / "fq.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "results"
    run_experiment(load_experiment(path), out, progress=False)
    with ResultsStore(out, create=False) as store:
        rows = store.rows()
    assert len(rows) == 3
    assert [r["metrics"].get("models.model.forgetting_quality.forgetting_quality")
            for r in rows if r["method"] == "original"] == [None]  # N runs of a method: none
    for r in (r for r in rows if r["method"] != "original"):
        score = r["metrics"]["models.model.forgetting_quality.forgetting_quality"]
        assert 0.0 <= score <= 1.0
        assert Path(r["metrics"]["models.model.forgetting_quality.result_file"]).is_file()
    shared = next((out / "forgetting_quality").iterdir())
    assert len(list((shared / "retrained").iterdir())) == 3  # trained once, for both methods
    rep = write_report(out, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "forgetting quality" in md.split("## Figures")[0]
    assert any("forgetting_quality" in p.name for p in rep["figures"])
    bad = dict(raw, evaluation={"forgetting_quality": 2})
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(Exception, match="forgetting_quality"):
        load_experiment(path)


def test_a_grid_builds_the_fold_models_a_method_reads(killed_and_resumed, tmp_path,
                                                      medmnist_root, monkeypatch):
    """``oracle-match`` (targets from K fold models) runs in a grid: the runner builds the
    original's fold models once, before its first cell, instead of failing the cell."""
    from medunlearn.experiments.jobs import FOLDS_K

    monkeypatch.setenv("MEDMNIST_ROOT", str(medmnist_root))
    cfg = parse_experiment(yaml.safe_load(_study(tmp_path, medmnist_root,
                                                 ["retrain", "oracle-match"]).read_text()))
    out = tmp_path / "folds-results"
    shutil.copytree(killed_and_resumed["out"] / "models" / "original",
                    out / "models" / "original")
    summary = run_experiment(cfg, out, progress=False)
    assert summary.ok and summary.completed == 3, summary
    original = next(p for p in (out / "models" / "original").iterdir()
                    if not p.name.startswith("."))
    members = sorted((original / "kfold" / "members").glob("k*.json"))
    assert len(members) == FOLDS_K
    with ResultsStore(out) as store:
        methods = sorted(r["method"] for r in store.rows())
    assert "oracle-match" in methods

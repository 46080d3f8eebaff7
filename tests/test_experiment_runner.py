"""The experiment runner with a pipeline of fakes: sharing, resumption, crashes, failures.

The fakes build run folders the same way the real functions do (``staged_output``), record
every call in a file (so calls made by a killed subprocess are counted too), and can kill their
own process with SIGKILL at a chosen point to simulate ``kill -9``.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from medunlearn.experiments.config import parse_experiment
from medunlearn.experiments.jobs import Pipeline
from medunlearn.experiments.runner import ExperimentBusyError, results_lock, run_experiment
from medunlearn.experiments.store import ResultsStore, flatten
from medunlearn.fileio import atomic_write_json, staged_output

STUDY = {
    "name": "fake",
    "datasets": [{"dataset": "breastmnist", "view": "binary"}],
    "forget": ["random:0.2", "random:0.5"],
    "methods": ["retrain", "finetune", "salun-cra"],
    "seeds": [0, 1],
    "augment": ["none"],
    "train": {"epochs": 1},
}
# forget x (methods + the do-nothing row "original (no unlearning)") x seeds
N_CELLS = 2 * (3 + 1) * 2


# -- the fake pipeline (module-level functions: picklable, importable by a subprocess) -------
def _note(calls: str, what: str) -> None:
    with open(calls, "a") as fh:
        fh.write(what + "\n")


def _maybe_die(crash: str | None, what: str) -> None:
    if crash and crash == what:
        os.kill(os.getpid(), signal.SIGKILL)


def _build(out: Path, metrics: dict, crash: str | None, what: str) -> dict:
    with staged_output(out, what="run") as stage:
        atomic_write_json(stage / "config.json", {"kind": what})
        _maybe_die(crash, f"staging:{what}")  # dies with a half-built staging folder
        atomic_write_json(stage / "metrics.json", metrics)
    return metrics


def fake_original(job, out, *, calls, crash=None):
    _note(calls, f"original {job.slug}")
    return _build(out, {"train_seconds": 10.0}, crash, "original")


def fake_reference(job, original, out, *, calls, crash=None):
    _note(calls, f"reference {job.slug}")
    return _build(out, {"unlearn_seconds": 8.0}, crash, "reference")


def fake_unlearn(job, original, reference, out, *, calls, crash=None):
    _note(calls, f"unlearn {job.slug}")
    if crash == f"raise:{job.method.name}":
        raise RuntimeError("boom")
    return _build(out, {"unlearn_seconds": 2.0}, crash, f"unlearn:{job.method.name}")


def fake_evaluate(job, run_dir, original, reference, *, calls, crash=None):
    _note(calls, f"evaluate {job.slug}")
    _maybe_die(crash, f"evaluate:{job.method.name}")
    ua = 0.3 if job.method.name == "retrain" else 0.2
    return {"models": {"model": {"utility": {"UA": ua, "RA": 0.9, "TA": 0.8, "test_auc": 0.85},
                                 "privacy": {"mia_efficacy": 0.4, "attack_auc": 0.55},
                                 "clinical": {"test": {"fnr": 0.2, "fpr": 0.1,
                                                       "global_risk": 0.6}}},
                       "original": {"clinical": {"test": {"fnr": 0.15}}}},
            # doing nothing is 2 pp from the reference; salun-cra no closer, finetune closer
            "fidelity": {"average_gap_pp": {"original": 2.0, "salun-cra": 2.0,
                                            "retrain": 0.0}.get(job.method.name, 1.5)}}


def fake_verdict(metrics, tolerances=None, *, crash=None):
    return {"passed": True, "reasons": []}


def fake_pipeline(calls: str | Path, crash: str | None = None) -> Pipeline:
    p = functools.partial
    calls = str(calls)
    return Pipeline(train_original=p(fake_original, calls=calls, crash=crash),
                    train_reference=p(fake_reference, calls=calls, crash=crash),
                    unlearn=p(fake_unlearn, calls=calls, crash=crash),
                    evaluate=p(fake_evaluate, calls=calls, crash=crash),
                    verdict=p(fake_verdict, crash=crash))


def crash_run(out: str, calls: str, crash: str) -> None:
    """Entry point of the subprocess that kills itself at ``crash``."""
    run_experiment(parse_experiment(STUDY), out, pipeline=fake_pipeline(calls, crash),
                   progress=False)


# -- helpers ----------------------------------------------------------------------------------
def _calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _check_table(out: Path) -> list[str]:
    """Exactly one row per cell, nothing half-written, no staging folders left."""
    con = sqlite3.connect(out / "results.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    keys = [r[0] for r in con.execute("SELECT key FROM results")]
    assert len(keys) == len(set(keys))
    for (metrics,) in con.execute("SELECT metrics FROM results"):
        assert json.loads(metrics)["models.model.utility.UA"] in (0.2, 0.3)
    con.close()
    leftovers = [p for p in out.rglob(".*") if ".staging-" in p.name]
    assert not leftovers
    return keys


# -- tests --------------------------------------------------------------------------------------
def test_runs_every_cell_once_and_shares_models(tmp_path):
    calls = tmp_path / "calls.txt"
    out = tmp_path / "results"
    summary = run_experiment(parse_experiment(STUDY), out, pipeline=fake_pipeline(calls),
                             progress=False)
    assert summary.ok and summary.completed == N_CELLS and summary.already_done == 0
    log = _calls(calls)
    assert sum(c.startswith("original") for c in log) == 2  # one per seed
    assert sum(c.startswith("reference") for c in log) == 4  # per seed and forget set
    # retrain reuses its reference: only finetune and salun-cra are unlearned
    assert sum(c.startswith("unlearn") for c in log) == 2 * 2 * 2
    assert sum(c.startswith("evaluate") for c in log) == N_CELLS
    assert len(_check_table(out)) == N_CELLS
    # rows carry key columns, headline metrics, timings and the flattened metrics
    with ResultsStore(out) as store:
        rows = store.rows()
    # one do-nothing row per reference: the original evaluated, nothing unlearned, no time
    nothing = [r for r in rows if r["method"] == "original"]
    assert len(nothing) == 4 and {r["label"] for r in nothing} == {"original (no unlearning)"}
    assert all(r["run_dir"] == r["original_dir"] and r["unlearn_seconds"] is None
               and r["speedup"] is None for r in nothing)
    assert not any(c.startswith("unlearn ") and "original_no_unlearning" in c for c in log)
    assert sum("original_no_unlearning" in c for c in log) == 4  # evaluated, once each
    r = next(r for r in rows if r["method"] == "finetune")
    assert r["UA"] == 0.2 and r["fnr"] == 0.2 and r["original_fnr"] == 0.15
    assert r["fnr_change"] == pytest.approx(0.05)
    assert r["speedup"] == pytest.approx(4.0) and r["retrain_seconds"] == 8.0
    assert r["forget_ratio"] in (0.2, 0.5) and r["gate_passed"] is True
    assert r["metrics"]["fidelity.average_gap_pp"] == 1.5
    # one log file per job, and the CSV export has a row per cell
    assert len(list((out / "logs" / "cell").glob("*.log"))) == N_CELLS
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == N_CELLS + 1
    assert "m.models.model.utility.UA" in csv_lines[0]
    # a rerun does nothing
    calls.unlink()
    again = run_experiment(parse_experiment(STUDY), out, pipeline=fake_pipeline(calls),
                           progress=False)
    assert again.already_done == N_CELLS and again.completed == 0
    assert _calls(calls) == []
    # extending the grid runs only the new cells and reuses the trained models
    bigger = STUDY | {"methods": STUDY["methods"] + ["random-label"]}
    more = run_experiment(parse_experiment(bigger), out, pipeline=fake_pipeline(calls),
                          progress=False)
    assert more.completed == 4 and more.already_done == N_CELLS
    assert all(c.split()[0] in ("unlearn", "evaluate") for c in _calls(calls))


def test_report_of_a_grid_has_the_do_nothing_row(tmp_path):
    """The runner's do-nothing rows reach the report: one row per table, scored like a method,
    and a method whose gap is not below it is named as no better than doing nothing."""
    from medunlearn.experiments.report import write_report

    out = tmp_path / "results"
    study = parse_experiment(STUDY)
    run_experiment(study, out, pipeline=fake_pipeline(tmp_path / "calls.txt"), progress=False)
    md = write_report(out, tmp_path / "report", study=study)["markdown"].read_text()
    assert md.count("| original (no unlearning) | 2 | pass |") == 2  # one per forget set
    assert md.count("| salun-cra ∅ | 2 |") == 2 and "| finetune | 2 |" in md
    assert md.count("No better than doing nothing by the average gap (not more than 0.01 pp "
                    "below the untouched original's 2.00 pp): salun-cra.") == 2


@pytest.mark.parametrize("crash", [
    "staging:original",  # killed while the original model is half written
    "staging:unlearn:salun-cra",  # killed inside a cell's staging folder
    "evaluate:salun-cra",  # killed after the run folder exists, before the row is inserted
])
def test_kill_minus_9_then_resume(tmp_path, crash):
    calls = tmp_path / "calls.txt"
    out = tmp_path / "results"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_experiment_runner as t; "
            "t.crash_run(sys.argv[2], sys.argv[3], sys.argv[4])")
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(out),
                           str(calls), crash], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with ResultsStore(out) as store:
        before = store.count()
    assert before < N_CELLS
    first = _calls(calls)
    calls.unlink()
    summary = run_experiment(parse_experiment(STUDY), out, pipeline=fake_pipeline(calls),
                             progress=False)
    assert summary.ok
    assert summary.already_done == before and summary.completed == N_CELLS - before
    assert len(_check_table(out)) == N_CELLS
    second = _calls(calls)
    # finished shared models are never rebuilt
    built_before = [c for c in first if c.split()[0] in ("original", "reference")]
    rebuilt = [c for c in second if c.split()[0] in ("original", "reference")]
    assert len(built_before) + len(rebuilt) - (1 if crash.startswith("staging:o") or
                                               crash.startswith("staging:r") else 0) == 2 + 4
    if crash == "evaluate:salun-cra":
        # the finished run folder is reused: only evaluated again, not unlearned again
        first_cell = next(c for c in first if c.startswith("evaluate") and "salun-cra" in c)
        slug = first_cell.split()[1]
        assert f"evaluate {slug}" in second and f"unlearn {slug}" not in second


def test_failed_cell_is_recorded_and_retried(tmp_path):
    calls = tmp_path / "calls.txt"
    out = tmp_path / "results"
    summary = run_experiment(parse_experiment(STUDY), out,
                             pipeline=fake_pipeline(calls, crash="raise:salun-cra"),
                             progress=False)
    assert len(summary.failed) == 4 and summary.completed == N_CELLS - 4
    with ResultsStore(out) as store:
        failures = store.failures()
    assert len(failures) == 4 and "RuntimeError: boom" in failures[0]["error"]
    log = Path(failures[0]["log"]).read_text()
    assert "Traceback" in log and "boom" in log
    summary = run_experiment(parse_experiment(STUDY), out, pipeline=fake_pipeline(calls),
                             progress=False)
    assert summary.ok and summary.completed == 4
    with ResultsStore(out) as store:
        assert store.count() == N_CELLS and store.failures() == []


def test_second_runner_on_same_folder_is_refused(tmp_path):
    with results_lock(tmp_path), pytest.raises(ExperimentBusyError, match="Another"):
        run_experiment(parse_experiment(STUDY), tmp_path, pipeline=fake_pipeline(tmp_path / "c"),
                       progress=False)


def test_store_rejects_duplicates_and_flattens(tmp_path):
    with ResultsStore(tmp_path) as store:
        row = {"key": "k1", "experiment": "x", "dataset": "d", "seed": 0, "metrics": {"a": 1}}
        assert store.insert(row) is True
        assert store.insert(row | {"seed": 5}) is False
        assert store.count() == 1 and store.rows()[0]["seed"] == 0
        with pytest.raises(ValueError, match="unknown result columns"):
            store.insert({"key": "k2", "bogus": 1})
    assert flatten({"a": {"b": [1, {"c": 2}]}, "d": None}) == {"a.b.0": 1, "a.b.1.c": 2,
                                                                 "d": None}

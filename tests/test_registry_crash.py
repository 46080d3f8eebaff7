"""Crash safety and concurrency of ``forget``: kill -9 at random points, crash points, two writers.

Each ``forget`` runs in a subprocess (``python -m medunlearn.registry forget ...``) with the fast
fake unlearn/verify steps selected by ``MEDUNLEARN_REGISTRY_STEPS=fake``; the fakes sleep
``MEDUNLEARN_REGISTRY_FAKE_DELAY`` seconds per step so that kills land in every phase.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from medunlearn.checkpoint import save_weights
from medunlearn.config import DataConfig, ModelConfig
from medunlearn.data import load_dataset
from medunlearn.io import atomic_write_json
from medunlearn.registry import (
    RegistryError,
    fake_unlearn,
    fake_verify,
    forget,
    init_registry,
    status,
    verify_registry,
)
from medunlearn.registry.db import writer_lock
from medunlearn.runs import write_manifest
from medunlearn.training import build_for


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, medmnist_root):
    """An untrained (randomly initialised) but complete run folder: the fakes need no training."""
    cfg = DataConfig(dataset="breastmnist", train_limit=120, eval_limit=60,
                     data_root=str(medmnist_root))
    dataset = load_dataset(cfg, seed=0)
    model, spec = build_for(dataset, ModelConfig(width=8))
    out = tmp_path_factory.mktemp("crash-model") / "model"
    out.mkdir()
    save_weights(out / "model.safetensors", model)
    atomic_write_json(out / "config.json", {"kind": "train", "seed": 0, "data": cfg, "model": spec,
                                            "train": {}, "dataset": dataset.describe()})
    write_manifest(out / "manifest.csv", dataset)
    return out


@pytest.fixture
def reg(model_dir, tmp_path):
    init_registry(model_dir, tmp_path / "reg", methods=["salun-cra", "retrain"])
    return tmp_path / "reg"


def request_file(tmp_path, rid, indices):
    path = tmp_path / f"{rid}.json"
    path.write_text(json.dumps({"id": rid, "subject": f"s-{rid}", "indices": indices}))
    return path


def fake_env(**extra):
    env = dict(os.environ, MEDUNLEARN_REGISTRY_STEPS="fake", PYTHONUNBUFFERED="1")
    env.pop("MEDUNLEARN_REGISTRY_CRASH_AT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def spawn(reg, request, **env):
    return subprocess.Popen([sys.executable, "-m", "medunlearn.registry", "forget", str(reg),
                             "--request", str(request)], env=fake_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def request_status(reg, rid):
    conn = sqlite3.connect(reg / "registry.db")
    try:
        row = conn.execute("SELECT status FROM requests WHERE id = ?", (rid,)).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def assert_consistent(reg, rid, prev_active):
    """After a crash: the ledger and files verify, and the request is atomic."""
    report = verify_registry(reg)
    assert report.ok, report.problems
    st = status(reg)
    state = request_status(reg, rid)
    assert state in (None, "pending", "completed")
    active = st["active_version"]["n"]
    assert active == (prev_active + 1 if state == "completed" else prev_active), (state, active)
    assert len(st["versions"]) == active  # never a version row beyond the active one
    folder = reg / st["active_version"]["path"]
    assert {"model.safetensors", "config.json"} <= {p.name for p in folder.iterdir()}
    forgotten = st["samples"]["forgotten"]
    return state, forgotten


def finish(reg, request):
    return forget(reg, request, unlearn=fake_unlearn, verify=fake_verify)


def test_kill_9_at_random_points_never_corrupts_the_registry(reg, tmp_path):
    trials = 20
    rng = random.Random(1234)
    # one uninterrupted run to measure how long a request takes in a subprocess
    t0 = time.perf_counter()
    p = spawn(reg, request_file(tmp_path, "R0", [0, 1]), MEDUNLEARN_REGISTRY_FAKE_DELAY=0.1)
    assert p.wait(timeout=60) == 0, p.stderr.read().decode()
    span = time.perf_counter() - t0
    # and how long the interpreter takes to start, so that most kills land in the request itself
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medunlearn.registry", "forget", "--help"],
                   env=fake_env(), capture_output=True, check=True)
    start = min(0.8 * (time.perf_counter() - t0), 0.5 * span)
    states = {None: 0, "pending": 0, "completed": 0}
    orphans = 0
    for t in range(1, trials + 1):
        prev = status(reg)["active_version"]["n"]
        request = request_file(tmp_path, f"R{t}", [2 * t, 2 * t + 1])
        p = spawn(reg, request, MEDUNLEARN_REGISTRY_FAKE_DELAY=0.1)
        time.sleep(start + (span - start) * (t - 1 + rng.random()) / trials)  # stratified
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        state, _ = assert_consistent(reg, f"R{t}", prev)
        states[state] += 1
        orphans += any((reg / "staging").iterdir()) or len(list((reg / "versions").iterdir())) \
            > status(reg)["active_version"]["n"]
        # rerunning finishes the request (or reports the finished one) exactly once
        result = finish(reg, request)
        assert result["status"] == "completed" and result["to_version"] == prev + 1
        assert status(reg)["active_version"]["n"] == prev + 1
        assert not list((reg / "staging").iterdir())
    st = status(reg)
    assert len(st["versions"]) == trials + 2 and st["samples"]["forgotten"] == 2 * (trials + 1)
    assert [v["parent"] for v in st["versions"][1:]] == list(range(1, trials + 2))
    assert verify_registry(reg).ok
    print(f"kill -9 trials: {trials}, request state at kill: {states}, orphans: {orphans}")
    # the kills landed before, during and after requests (stratified delays)
    assert states["pending"] >= 1 and states["completed"] >= 1, (states, orphans)


@pytest.mark.parametrize("point,state_after_crash", [
    ("after-submit", "pending"),
    ("after-unlearn", "pending"),
    ("after-verify", "pending"),
    ("after-failed-attempt", "pending"),
    ("after-rename", "pending"),
    ("after-commit", "completed"),
])
def test_crash_points_resume(reg, tmp_path, point, state_after_crash):
    request = request_file(tmp_path, "R1", [3, 4])
    extra = {"MEDUNLEARN_REGISTRY_CRASH_AT": point}
    if point == "after-failed-attempt":
        extra["MEDUNLEARN_REGISTRY_FAKE_FAIL"] = "salun-cra"
    p = spawn(reg, request, **extra)
    assert p.wait(timeout=60) == 137, p.stderr.read().decode()
    state, _ = assert_consistent(reg, "R1", 1)
    assert state == state_after_crash
    if point == "after-rename":  # the candidate is in versions/ but not recorded: an orphan
        assert (reg / "versions" / "2").is_dir() and status(reg)["active_version"]["n"] == 1
    if point == "after-unlearn":  # 'medunlearn registry resume' finishes it without the file
        env = fake_env()
        done = subprocess.run([sys.executable, "-m", "medunlearn.registry", "registry", "resume",
                               str(reg)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "finished 1 pending request" in done.stdout, done.stderr
    result = finish(reg, request)
    assert result["status"] == "completed" and result["to_version"] == 2
    methods = [a["method"] for a in result["attempts"]]
    assert methods == (["salun-cra", "retrain"] if point == "after-failed-attempt"
                       else ["salun-cra"])
    assert verify_registry(reg).ok and not list((reg / "staging").iterdir())


@pytest.mark.parametrize("point,state_after_crash", [
    ("after-submit", "pending"),
    ("after-unlearn", "pending"),
    ("after-rename", "pending"),
    ("after-commit", "completed"),
])
def test_consolidation_crash_points_resume(reg, tmp_path, point, state_after_crash):
    finish(reg, request_file(tmp_path, "R1", [3, 4]))
    p = subprocess.Popen([sys.executable, "-m", "medunlearn.registry", "registry", "consolidate",
                          str(reg), "--id", "C1"],
                         env=fake_env(MEDUNLEARN_REGISTRY_CRASH_AT=point),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.wait(timeout=60) == 137, p.stderr.read().decode()
    state, forgotten = assert_consistent(reg, "C1", 2)
    assert state == state_after_crash and forgotten == 2
    done = subprocess.run([sys.executable, "-m", "medunlearn.registry", "registry",
                           "consolidate", str(reg), "--id", "C1"], env=fake_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    st = status(reg)
    assert st["active_version"]["n"] == 3 and st["active_version"]["method"] == "retrain"
    assert st["exactness"]["exact"] and len(st["versions"]) == 3
    assert verify_registry(reg).ok and not list((reg / "staging").iterdir())


def test_two_forget_processes_serialise(reg, tmp_path):
    a, b = request_file(tmp_path, "RA", [1, 2, 3]), request_file(tmp_path, "RB", [10, 11])
    procs = [spawn(reg, a, MEDUNLEARN_REGISTRY_FAKE_DELAY=0.2),
             spawn(reg, b, MEDUNLEARN_REGISTRY_FAKE_DELAY=0.2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    st = status(reg)
    assert [v["n"] for v in st["versions"]] == [1, 2, 3]
    assert [v["parent"] for v in st["versions"]] == [None, 1, 2]
    assert {r["id"] for r in st["requests"]["completed"]} == {"RA", "RB"}
    assert verify_registry(reg).ok
    # the two requests did not interleave: each one's ledger entries are contiguous
    conn = sqlite3.connect(reg / "registry.db")
    order = [r[0] for r in conn.execute(
        "SELECT request_id FROM ledger WHERE request_id IS NOT NULL ORDER BY seq")]
    assert len(order) == 8 and order[:4] == [order[0]] * 4 and order[4:] == [order[4]] * 4
    # the second one unlearned from the first one's version and excluded its images
    first, second = order[0], order[4]
    call = json.loads((reg / "versions" / "3" / "fake_call.json").read_text())
    assert call["exclude"] == ({"RA": [1, 2, 3], "RB": [10, 11]}[first])
    assert call["forget"] == ({"RA": [1, 2, 3], "RB": [10, 11]}[second])
    # the same request submitted twice at once: one promotion, one no-op report
    c = request_file(tmp_path, "RC", [20])
    procs = [spawn(reg, c, MEDUNLEARN_REGISTRY_FAKE_DELAY=0.1) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum("already completed" in o[0].decode() for o in outs) == 1
    assert len(status(reg)["versions"]) == 4 and verify_registry(reg).ok


def test_lock_timeout_is_a_clear_error(reg, tmp_path):
    with writer_lock(reg), pytest.raises(RegistryError, match="Another medunlearn process"):
        forget(reg, request_file(tmp_path, "R1", [1]), unlearn=fake_unlearn, verify=fake_verify,
               lock_timeout=0.2)
    assert status(reg)["requests"]["pending"] == []

"""Crash safety and concurrency of ``forget``: kill -9 at random points, crash points, two writers.

Each ``forget`` runs in a child process (``_registry_child.py``) that installs the fast fake
unlearn/verify steps of ``medunlearn.testing``. Kills land at the stages the child reports, never
after a delay, so no test depends on timing or machine load. The model is an untrained network on
synthetic BreastMNIST-format data: the fakes need no training and no real data.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from medunlearn.registry import (
    RegistryError,
    audit_registry,
    forget,
    init_registry,
    status,
)
from medunlearn.registry.db import writer_lock
from medunlearn.testing import fake_unlearn, fake_verify, untrained_run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, synth_root):
    """An untrained (randomly initialised) but complete run folder: the fakes need no training."""
    return untrained_run(tmp_path_factory.mktemp("crash-model") / "model", data_root=synth_root,
                         verify_md5=False)


@pytest.fixture
def reg(model_dir, tmp_path):
    init_registry(model_dir, tmp_path / "reg", methods=["salun-cra", "retrain"])
    return tmp_path / "reg"


def request_file(tmp_path, rid, indices):
    path = tmp_path / f"{rid}.json"
    path.write_text(json.dumps({"id": rid, "subject": f"s-{rid}", "indices": indices}))
    return path


CHILD = Path(__file__).with_name("_registry_child.py")
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def child(argv, *, fail=(), delay=0.0, target="-"):
    """The command line of a child running the registry command ``argv`` with the fake steps
    (``fail``: methods the fake gate fails; ``delay``: seconds per fake step), stopping at stage
    ``target`` (``-``: never)."""
    return [sys.executable, str(CHILD), "--fail", ",".join(fail), "--delay", str(delay), target,
            *map(str, argv)]


def spawn(reg, request, *, delay):
    return subprocess.Popen(child(["forget", reg, "--request", request], delay=delay), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_to_stage(argv, target, *, fail=()):
    """Run a registry command in a child and SIGKILL it when it reports stage ``target``
    (``name#k``: the k-th time it reaches ``name``; ``-``: run to the end).

    Returns:
        The stages the child reported, in order.
    """
    p = subprocess.Popen(child(argv, fail=fail, target=target), env=ENV, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stages = []
    for line in p.stdout:
        if line.startswith("STAGE "):
            stages.append(line.split()[1])
        elif line.strip() == "STOPPED":
            p.kill()
            break
    p.wait(timeout=60)
    err = p.stderr.read()
    p.stdout.close(), p.stderr.close(), p.stdin.close()
    if target == "-":
        assert p.returncode == 0, err
    else:
        assert stages[-1:] == [target] and p.returncode == -signal.SIGKILL, (stages, err)
    return stages


def request_status(reg, rid):
    conn = sqlite3.connect(reg / "registry.db")
    try:
        row = conn.execute("SELECT status FROM requests WHERE id = ?", (rid,)).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def assert_consistent(reg, rid, prev_active):
    """After a crash: the ledger and files verify, and the request is atomic."""
    report = audit_registry(reg)
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


def test_kill_9_at_every_stage_never_corrupts_the_registry(reg, tmp_path):
    # one uninterrupted request lists the stages a request goes through
    stages = run_to_stage(["forget", reg, "--request", request_file(tmp_path, "R0", [0, 1])], "-")
    assert {"after-submit#1", "after-unlearn#1", "after-verify#1", "after-rename#1",
            "before-commit#2", "after-commit-before-head#2", "after-commit#1"} <= set(stages)
    states = {None: 0, "pending": 0, "completed": 0}
    for t, target in enumerate(stages, start=1):
        prev = status(reg)["active_version"]["n"]
        request = request_file(tmp_path, f"R{t}", [2 * t, 2 * t + 1])
        run_to_stage(["forget", reg, "--request", request], target)
        state, _ = assert_consistent(reg, f"R{t}", prev)
        states[state] += 1
        # rerunning finishes the request (or reports the finished one) exactly once
        result = finish(reg, request)
        assert result["status"] == "completed" and result["to_version"] == prev + 1
        assert status(reg)["active_version"]["n"] == prev + 1
        assert not list((reg / "staging").iterdir())
        assert not (reg / "LEDGER_HEAD.next").exists()
    n = len(stages)
    st = status(reg)
    assert len(st["versions"]) == n + 2 and st["samples"]["forgotten"] == 2 * (n + 1)
    assert [v["parent"] for v in st["versions"][1:]] == list(range(1, n + 2))
    assert audit_registry(reg).ok
    # kills before the first commit leave no request, later ones a pending or completed one
    assert states[None] >= 1 and states["pending"] >= 3 and states["completed"] >= 2, states


@pytest.mark.parametrize("point,state_after_crash", [
    ("after-submit#1", "pending"),
    ("after-unlearn#1", "pending"),
    ("after-verify#1", "pending"),
    ("after-failed-attempt#1", "pending"),
    ("after-rename#1", "pending"),
    ("after-commit-before-head#2", "completed"),
    ("after-commit#1", "completed"),
])
def test_crash_points_resume(reg, tmp_path, point, state_after_crash):
    request = request_file(tmp_path, "R1", [3, 4])
    fail = ["salun-cra"] if point == "after-failed-attempt#1" else []
    run_to_stage(["forget", reg, "--request", request], point, fail=fail)
    state, _ = assert_consistent(reg, "R1", 1)
    assert state == state_after_crash
    if point.startswith("after-commit-before-head"):  # committed, head file one step behind
        assert "interrupted after its commit" in audit_registry(reg).warnings[0]
    if point == "after-rename#1":  # the candidate is in versions/ but not recorded: an orphan
        assert (reg / "versions" / "2").is_dir() and status(reg)["active_version"]["n"] == 1
    if point == "after-unlearn#1":  # 'medunlearn registry resume' finishes it without the file
        done = subprocess.run(child(["registry", "resume", reg]), env=ENV, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and "finished 1 pending request" in done.stdout, done.stderr
    result = finish(reg, request)
    assert result["status"] == "completed" and result["to_version"] == 2
    methods = [a["method"] for a in result["attempts"]]
    assert methods == (["salun-cra", "retrain"] if point == "after-failed-attempt#1"
                       else ["salun-cra"])
    assert audit_registry(reg).ok and not list((reg / "staging").iterdir())


@pytest.mark.parametrize("point,state_after_crash", [
    ("after-submit#1", "pending"),
    ("after-unlearn#1", "pending"),
    ("after-rename#1", "pending"),
    ("after-commit#1", "completed"),
])
def test_consolidation_crash_points_resume(reg, tmp_path, point, state_after_crash):
    finish(reg, request_file(tmp_path, "R1", [3, 4]))
    run_to_stage(["registry", "consolidate", reg, "--id", "C1"], point)
    state, forgotten = assert_consistent(reg, "C1", 2)
    assert state == state_after_crash and forgotten == 2
    done = subprocess.run(child(["registry", "consolidate", reg, "--id", "C1"]), env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    st = status(reg)
    assert st["active_version"]["n"] == 3 and st["active_version"]["method"] == "retrain"
    assert st["exactness"]["exact"] and len(st["versions"]) == 3
    assert audit_registry(reg).ok and not list((reg / "staging").iterdir())


def test_two_forget_processes_serialise(reg, tmp_path):
    a, b = request_file(tmp_path, "RA", [1, 2, 3]), request_file(tmp_path, "RB", [10, 11])
    procs = [spawn(reg, a, delay=0.2), spawn(reg, b, delay=0.2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    st = status(reg)
    assert [v["n"] for v in st["versions"]] == [1, 2, 3]
    assert [v["parent"] for v in st["versions"]] == [None, 1, 2]
    assert {r["id"] for r in st["requests"]["completed"]} == {"RA", "RB"}
    assert audit_registry(reg).ok
    # the two requests did not interleave: each one's ledger entries are contiguous
    conn = sqlite3.connect(reg / "registry.db")
    order = [r[0] for r in conn.execute(
        "SELECT request_id FROM ledger WHERE request_id IS NOT NULL ORDER BY seq")]
    # (request, attempt, promote, complete, purge) each
    assert len(order) == 10 and order[:5] == [order[0]] * 5 and order[5:] == [order[5]] * 5
    # the second one unlearned from the first one's version and excluded its images
    first, second = order[0], order[5]
    call = json.loads((reg / "versions" / "3" / "fake_call.json").read_text())
    assert call["exclude"] == ({"RA": [1, 2, 3], "RB": [10, 11]}[first])
    assert call["forget"] == ({"RA": [1, 2, 3], "RB": [10, 11]}[second])
    # the same request submitted twice at once: one promotion, one no-op report
    c = request_file(tmp_path, "RC", [20])
    procs = [spawn(reg, c, delay=0.1) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum("already completed" in o[0].decode() for o in outs) == 1
    assert len(status(reg)["versions"]) == 4 and audit_registry(reg).ok


def test_lock_timeout_is_a_clear_error(reg, tmp_path):
    with writer_lock(reg), pytest.raises(RegistryError, match="Another medunlearn process"):
        forget(reg, request_file(tmp_path, "R1", [1]), unlearn=fake_unlearn, verify=fake_verify,
               lock_timeout=0.2)
    assert status(reg)["requests"]["pending"] == []

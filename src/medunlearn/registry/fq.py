"""The per-example forgetting check of a completed deletion request (the costly check).

:func:`forgetting_quality_for` runs :func:`medunlearn.verify.verify_forgetting` for one request:
from the version the request started from, with the method that was promoted for it, on the
request's own images, keeping every image withdrawn before it out of all 2N runs (as the request
itself did). Its work folders are derived data under ``REG/forgetting_quality/<request>/`` (like
``REG/cache``: a re-run reuses the finished runs). The registry's record of the outcome is
``REG/forgetting_quality/<request>/forgetting_quality.json``; its SHA-256 goes into a
``forgetting_quality`` ledger entry, so a certificate's claim is tamper-evident:
:func:`file_problems` (part of ``audit verify``) reports a stored file that no longer matches
the latest entry of its request.

Locking: the checks and the ledger entry are made under the registry's writer lock; the 2N
trainings in between are not (they read only version folders, which never change once
recorded), so deletion requests are not held up for the minutes the check takes. A second check
of the same request at the same time is refused (``REG/forgetting_quality/<request>/lock``).

Writing: the record is first written as ``forgetting_quality.json.next``, the ledger entry is
committed, then the file is renamed into place. A run killed between the commit and the rename
leaves ``.next`` matching the ledger; readers accept it, and the next check of the request
finishes the rename before it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from pathlib import Path

from medunlearn.io import _fsync_dir, atomic_write_json, sha256_file

FQ_DIR = "forgetting_quality"
ENTRY_KIND = "forgetting_quality"
RECORD_FILE = "forgetting_quality.json"
NEXT_SUFFIX = ".next"
DEFAULT_N = 16

#: How to read a per-image epsilon (certificates show it next to the table).
HOW_TO_READ = ("Epsilon near 0: this image's outputs cannot be told apart from models retrained "
               "without it. The larger the epsilon, the more the model's outputs on the image "
               "still give it away. U-LiRA near 0.5 means the same: a per-image attack that "
               "guesses 'unlearned or retrained?' does no better than a coin.")


def how_to_read() -> str:
    """:data:`HOW_TO_READ` and what the largest epsilon means."""
    from medunlearn.evaluation.forgetting_quality import EPSILON_CAP

    return (f"{HOW_TO_READ} An epsilon of {EPSILON_CAP:g} is the cap: the two groups of models "
            "were told apart every time.")


def folder_name(request_id: str) -> str:
    """A file-name-safe folder for a request id (ids may hold ``/`` and ``:``); ids changed by
    the mapping get a short hash so that two ids never share a folder."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", request_id)
    if safe != request_id:
        safe += "-" + hashlib.sha256(request_id.encode("utf-8")).hexdigest()[:8]
    return safe


def folder(reg: str | os.PathLike, request_id: str) -> Path:
    return Path(reg) / FQ_DIR / folder_name(request_id)


def command(reg: str | os.PathLike, request_id: str) -> str:
    """The command that runs the check for a request."""
    return f"medunlearn audit forgetting-quality {reg} {request_id}"


# --------------------------------------------------------------------------- reading


def latest_entries(entries: list[dict]) -> dict[str, dict]:
    """The last ``forgetting_quality`` ledger entry of each request."""
    return {e["request_id"]: e for e in entries
            if e["kind"] == ENTRY_KIND and isinstance(e["body"], dict)}


def _matching_file(reg: Path, request_id: str, want: str | None) -> Path | None:
    """The record file (or its ``.next``, see the module doc) whose SHA-256 is ``want``."""
    final = folder(reg, request_id) / RECORD_FILE
    for path in (final, final.with_name(RECORD_FILE + NEXT_SUFFIX)):
        if path.is_file() and sha256_file(path) == want:
            return path
    return None


def file_problems(reg: str | os.PathLike, entries: list[dict]) -> list[str]:
    """Each stored forgetting-quality record that differs from the latest ledger entry of its
    request (a missing record is not a problem: the ledger still holds the numbers, and the
    command that made it makes it again), and each entry for a request that was not completed
    when it was recorded. The entries change no table."""
    reg = Path(reg)
    problems = []
    completed: set[str] = set()
    for e in entries:
        if e["kind"] == "complete":
            completed.add(e["request_id"])
        elif e["kind"] in ("retry", "failed"):
            completed.discard(e["request_id"])
        elif e["kind"] == ENTRY_KIND and e["request_id"] not in completed:
            problems.append(f"ledger entry {e['seq']} records a forgetting-quality result for "
                            f"request {e['request_id']}, which was not completed then (the "
                            "ledger was edited)")
    for rid, e in sorted(latest_entries(entries).items()):
        final = folder(reg, rid) / RECORD_FILE
        want = e["body"].get("result_sha256")
        if final.is_file() and _matching_file(reg, rid, want) is None:
            problems.append(f"request {rid}: {final} has SHA-256 {sha256_file(final)} but ledger "
                            f"entry {e['seq']} recorded {want} (the forgetting-quality result "
                            "was changed)")
    return problems


def _finish_interrupted(reg: Path, conn: sqlite3.Connection, request_id: str) -> None:
    """Rename a ``.next`` record left by a run killed after its commit (writer lock held)."""
    found = recorded(reg, conn, request_id)
    final = folder(reg, request_id) / RECORD_FILE
    nxt = final.with_name(RECORD_FILE + NEXT_SUFFIX)
    if found and nxt.is_file() and sha256_file(nxt) == found["entry"]["body"].get(
            "result_sha256"):
        os.replace(nxt, final)
        _fsync_dir(final.parent)


def recorded(reg: str | os.PathLike, conn: sqlite3.Connection, request_id: str) -> dict | None:
    """The request's latest recorded check: ``{"entry": ledger entry, "record": the stored
    record, or None when its file is missing or does not match the entry}``; None when the
    check was never recorded."""
    from medunlearn.registry import ledger

    e = latest_entries(ledger.entries(conn, request_id)).get(request_id)
    if e is None:
        return None
    path = _matching_file(Path(reg), request_id, e["body"].get("result_sha256"))
    record = json.loads(path.read_text(encoding="utf-8")) if path else None
    return {"entry": e, "record": record}


# --------------------------------------------------------------------------- the check


def _check_lock(work: Path, request_id: str):
    """Refuse a second check of the same request while one runs (it would train into the same
    run folders)."""
    from medunlearn.io import exclusive_lock
    from medunlearn.registry.errors import RegistryError

    return exclusive_lock(work / "lock", lambda: RegistryError(
        f"Another forgetting-quality check of request {request_id} is running (it holds "
        f"{work / 'lock'}). Wait for it to finish; its result will be in the request's "
        "certificate."))


def _exclude_at_promotion(entries: list[dict], request_id: str, own: list[int]) -> list[int]:
    """Images withdrawn before the request's model was promoted (by the registered model's own
    earlier forgetting, or by any request submitted before): the request's unlearning kept them
    out of both its forget and retain sets, and so must every run of the check."""
    out: set[int] = set()
    for e in entries:
        body = e["body"] if isinstance(e["body"], dict) else {}
        if e["kind"] == "promote" and e["request_id"] == request_id:
            break
        if e["kind"] == "init":
            out.update(int(i) for i in body.get("forgotten_before", []))
        elif e["kind"] == "request":
            out.update(int(it["index"]) for it in body.get("forget", []))
    return sorted(out - set(own))


def _plan(reg: Path, conn: sqlite3.Connection, request_id: str) -> dict:
    """What the check of a request runs (call with the writer lock held, after ``recover``).

    Raises:
        RegistryError: unknown, unfinished, no-op or consolidation request.
    """
    from medunlearn.registry import ledger
    from medunlearn.registry.core import _items
    from medunlearn.registry.db import get_meta
    from medunlearn.registry.errors import RegistryError

    r = conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
    if r is None:
        known = [x[0] for x in conn.execute("SELECT id FROM requests ORDER BY num LIMIT 20")]
        raise RegistryError(f"Registry {reg} has no request {request_id!r}; known requests: "
                            f"{', '.join(known) or 'none'}. Give the id of a completed request "
                            f"('medunlearn registry status {reg}' lists them).")
    if r["status"] != "completed":
        raise RegistryError(
            f"Request {request_id} is {r['status']}, not completed: there is no unlearned model "
            "to check yet. " + ("Finish it with 'medunlearn registry resume "
                                f"{reg}', then run this again." if r["status"] == "pending" else
                                "Resubmit it with 'medunlearn forget' (or retrain with "
                                "'medunlearn registry consolidate'), then run this again."))
    if json.loads(r["body"]).get("consolidate"):
        raise RegistryError(
            f"{request_id} is a consolidation: its model was retrained from scratch, which is "
            "exactly what the check compares against, so there is nothing to check. Run the "
            "check on the deletion requests instead.")
    if r["to_version"] == r["from_version"]:
        raise RegistryError(
            f"Request {request_id} made no new model (its images had already been forgotten), "
            "so there is no unlearning to check. Run the check on the request that forgot "
            "them (its certificate names it).")
    method = conn.execute("SELECT method FROM versions WHERE n = ?",
                          (r["to_version"],)).fetchone()["method"]
    own = _items(conn, request_id, "forget")
    return {"request_id": request_id, "from_version": r["from_version"],
            "to_version": r["to_version"], "method": method, "forget": own,
            "exclude": _exclude_at_promotion(ledger.entries(conn), request_id, own),
            "seed": int(get_meta(conn, "seed", "0")),
            "data_root": get_meta(conn, "data_root") or None}


def forgetting_quality_for(reg: str | os.PathLike, request_id: str, *, n: int = DEFAULT_N,
                           data_root: str | None = None, download: bool = True,
                           progress: bool = False, lock_timeout: float | None = None) -> dict:
    """Run the per-example forgetting check of a completed request and record it.

    Trains (or reuses) N models unlearned from the version the request started from with the
    promoted method (seeds ``seed .. seed + N - 1``; the registered model's seed, so one of them
    is the promoted model itself) and N models retrained without the request's images, all
    without the images withdrawn before it, and scores each of the request's images
    (:mod:`medunlearn.verify`).

    Args:
        reg: The registry folder.
        request_id: A completed deletion request.
        n: Models per side (at least 3; 16 by default).
        data_root: MedMNIST folder (default: the one recorded at ``init``).
        download: ``False``: refuse when the model's data file is not on disk.
        progress: A progress bar over the 2N runs.
        lock_timeout: Seconds to wait for another writer (default: wait).

    Returns:
        The stored record (see :func:`_record`), with ``ledger_seq`` of its entry.

    Raises:
        ConfigError: ``n`` too small.
        RegistryError: unknown or unfinished request, a consolidation or no-op request, or
            another check of the same request running.
        AuditError: the registry does not match its ledger.
        DataError: the data file is missing.
    """
    from medunlearn import verify
    from medunlearn.registry import ledger, store
    from medunlearn.registry.core import _require_local_data, recover
    from medunlearn.registry.db import connect, writer_lock
    from medunlearn.registry.steps import REQUEST_OPTIONS, VERIFY_OPTIONS

    verify.check_n(n)
    reg = Path(reg)
    connect(reg).close()  # a clear error if reg is not a registry
    with writer_lock(reg, timeout=lock_timeout):
        conn = connect(reg)
        try:
            recover(reg, conn)
            plan = _plan(reg, conn, request_id)
            _finish_interrupted(reg, conn, request_id)
            data_root = data_root or plan["data_root"]
            if not download:
                _require_local_data(reg, conn, data_root, version=plan["from_version"])
            model_dir = reg / f"versions/{plan['from_version']}"
        finally:
            conn.close()
    work = folder(reg, request_id)
    options = REQUEST_OPTIONS.get(plan["method"])
    with _check_lock(work, request_id):
        # the trainings run without the writer lock: version folders never change once recorded
        result = verify.verify_forgetting(
            model_dir, forget=plan["forget"], method=plan["method"], out=work, n=n,
            seed=plan["seed"], options=options, data_root=data_root, progress=progress,
            retain_limit=VERIFY_OPTIONS["retain_limit"], exclude=plan["exclude"],
            overwrite=True)  # the request's own folder: runs of an earlier version are replaced
        record = _record(plan, result, n)
        final = work / RECORD_FILE
        nxt = final.with_name(RECORD_FILE + NEXT_SUFFIX)
        with writer_lock(reg, timeout=lock_timeout):
            conn = connect(reg)
            try:
                recover(reg, conn)
                atomic_write_json(nxt, record)
                sha = sha256_file(nxt)
                with store.write(reg, conn):
                    entry = ledger.append(conn, ENTRY_KIND, {
                        "n": n, "method": plan["method"], "from_version": plan["from_version"],
                        "to_version": plan["to_version"], "seed": plan["seed"],
                        "forget_count": len(plan["forget"]),
                        "exclude_count": len(plan["exclude"]),
                        "score": record["forgetting_quality"],
                        "ci": record["forgetting_quality_ci"],
                        "null": record["forgetting_quality_null"],
                        "file": f"{FQ_DIR}/{work.name}/{RECORD_FILE}",
                        "result_sha256": sha}, request_id=request_id)
                store.stage("after-forgetting-quality-commit")
                os.replace(nxt, final)
                _fsync_dir(work)
            finally:
                conn.close()
    return record | {"ledger_seq": entry["seq"]}


def _finite(v):
    return v if isinstance(v, (int, float)) and v == v and abs(v) != float("inf") else None


def _record(plan: dict, result: dict, n: int) -> dict:
    """The registry's record of a check: the headline numbers, one row per request image, and
    the full :func:`~medunlearn.verify.verify_forgetting` result."""
    from medunlearn.verify import examples_for, record_section

    examples = examples_for(result, indices=plan["forget"])
    return {
        "kind": "registry_forgetting_quality", "request_id": plan["request_id"],
        "created": result.get("created"), "n": n, "method": plan["method"],
        "from_version": plan["from_version"], "to_version": plan["to_version"],
        "seed": plan["seed"], "forget_count": len(plan["forget"]),
        "exclude_count": len(plan["exclude"]),
        "forgetting_quality": _finite(result["forgetting_quality"]),
        "forgetting_quality_ci": [_finite(v) for v in result["forgetting_quality_ci"]],
        "ci_level": result.get("ci_level"),
        "forgetting_quality_null": _finite(result.get("forgetting_quality_null")),
        "forgetting_quality_best": 1.0,
        "ulira_accuracy": _finite(result.get("ulira_accuracy")),
        "identical_unlearned_models": result.get("identical_unlearned_models"),
        "note": result.get("note"),
        "examples": examples,
        "summary": record_section(result),
        "verify_result": {k: v for k, v in result.items() if k != "scores"},
    }


__all__ = ["ENTRY_KIND", "FQ_DIR", "HOW_TO_READ", "RECORD_FILE", "command", "file_problems",
           "folder", "forgetting_quality_for", "how_to_read", "recorded"]

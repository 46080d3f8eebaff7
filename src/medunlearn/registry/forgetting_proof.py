"""The per-image forgetting proof of a completed deletion request (the costly check).

:func:`forgetting_quality_for` runs :func:`medunlearn.runs.verify_forgetting` for one request:
from the version the request started from, with the method that was promoted for it, on the
request's own images, keeping every image withdrawn before it out of all 2N runs (as the request
itself did). Its work folders are derived data under ``REG/forgetting_quality/<request>/`` (like
``REG/cache``: a re-run reuses the finished runs). Where the record is stored, how it is read and
how the audit checks it against its ledger entry: :mod:`.proof_records`.

Locking: the checks and the ledger entry are made under the registry's writer lock; the 2N
trainings in between are not (they read only version folders, which never change once
recorded), so deletion requests are not held up for the minutes the proof takes. A second proof
of the same request at the same time is refused (``REG/forgetting_quality/<request>/lock``).

Writing: the record is first written as ``forgetting_quality.json.next``, the ledger entry is
committed (with the SHA-256 of the record and of every scratch-run file, so that a re-run never
reuses a file changed behind its back), then the file is renamed into place (see
:mod:`.proof_records` for a run killed in between).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from medunlearn.fileio import _fsync_dir, atomic_write_json, exclusive_lock, sha256_file
from medunlearn.registry import ledger, store
from medunlearn.registry.db import connect, get_meta, writer_lock
from medunlearn.registry.errors import RegistryError
from medunlearn.registry.proof_records import (
    ENTRY_KIND,
    FQ_DIR,
    LOCK_FILE,
    NEXT_SUFFIX,
    RECORD_FILE,
    finish_interrupted,
    folder,
    work_files,
)
from medunlearn.registry.requests import request_items
from medunlearn.registry.steps import REQUEST_OPTIONS, VERIFY_OPTIONS
from medunlearn.registry.versions import MODEL_FILE, require_local_data
from medunlearn.registry.workflow import recover

DEFAULT_N = 16


# --------------------------------------------------------------------------- the check


def _check_lock(work: Path, request_id: str):
    """Refuse a second proof of the same request while one runs (it would train into the same
    run folders)."""
    return exclusive_lock(work / LOCK_FILE, lambda: RegistryError(
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


def _proof_plan(reg: Path, conn: sqlite3.Connection, request_id: str) -> dict:
    """What the check of a request runs (call with the writer lock held, after ``recover``).

    Raises:
        RegistryError: unknown, unfinished, no-op or consolidation request.
    """
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
    start = reg / "versions" / str(r["from_version"]) / MODEL_FILE
    if not start.is_file():
        raise RegistryError(
            f"The check of {request_id} unlearns again from the model the request started from "
            f"(version {r['from_version']}), and that model's weights were purged when the "
            "request completed: superseded models trained on forgotten images are deleted by "
            "default. To check requests, keep the superseded model until the check has run: "
            f"'medunlearn forget {reg} --request FILE --keep-superseded 1' (or 'registry init "
            "--keep-superseded 1'), then run this command before the next request.")
    method = conn.execute("SELECT method FROM versions WHERE n = ?",
                          (r["to_version"],)).fetchone()["method"]
    own = request_items(conn, request_id, "forget")
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
    (:mod:`medunlearn.runs.per_example`).

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
    from medunlearn.evaluation.forgetting_quality import check_n
    from medunlearn.runs import verify_forgetting

    check_n(n)
    reg = Path(reg)
    connect(reg).close()  # a clear error if reg is not a registry
    with writer_lock(reg, timeout=lock_timeout):
        conn = connect(reg)
        try:
            recover(reg, conn)
            plan = _proof_plan(reg, conn, request_id)
            finish_interrupted(reg, conn, request_id)
            data_root = data_root or plan["data_root"]
            if not download:
                require_local_data(reg, conn, data_root, version=plan["from_version"])
            model_dir = reg / f"versions/{plan['from_version']}"
        finally:
            conn.close()
    work = folder(reg, request_id)
    options = REQUEST_OPTIONS.get(plan["method"])
    with _check_lock(work, request_id):
        # the trainings run without the writer lock: version folders never change once recorded
        result = verify_forgetting(
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
                        "result_sha256": sha, "files": work_files(work)}, request_id=request_id)
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
    the full :func:`~medunlearn.runs.verify_forgetting` result."""
    from medunlearn.evaluation.forgetting_quality import examples_for, record_section

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


__all__ = ["DEFAULT_N", "forgetting_quality_for"]

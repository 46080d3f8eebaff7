"""The workflow of a deletion request: recover, submit, attempt, promote (under the writer lock).

:func:`process_request` (the ``medunlearn forget`` command):

1. :func:`recover`: refuse a registry whose head file or tables do not match its ledger; remove
   orphan staging folders and version folders without a database row; finish pending requests
   left by a crashed run;
2. validate the request (nothing is written when it is refused; :func:`.requests.resolve`);
3. record it as *pending* (:func:`.requests.submit`: one transaction with the request, its
   images and a ledger entry); its images are withdrawn from every later retain set at once;
4. for each method of the chain (the request's method, else the registry's recommended one,
   then the fallbacks): unlearn from the *active* version into ``REG/staging``, excluding every
   image ever withdrawn from the retain set; gate the candidate against the active version;
   record the attempt (:func:`_attempt`). A passing candidate is renamed to ``REG/versions/<n>``
   and one transaction records attempt, verdict, promotion, forgotten images and ledger entries
   (:func:`_promote`).

A crash anywhere leaves the previous version active and the request pending (or complete); the
next ``forget`` or ``registry resume`` (:func:`resume`) finishes it.

The two steps are callables (:mod:`.steps`): the production ones unless a caller passes others.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

from medunlearn import cache
from medunlearn.errors import CheckpointError, DataError, OutputError, OutputExistsError
from medunlearn.fileio import _fsync_dir, sha256_file, write_index_rows
from medunlearn.registry import features, ledger, replay, residue, shadows, steps, store
from medunlearn.registry.db import connect, get_meta, set_meta, writer_lock
from medunlearn.registry.deletion_request import DeletionRequest, load_request
from medunlearn.registry.errors import RegistryError, RequestError
from medunlearn.registry.preflight import check_forget_options
from medunlearn.registry.replay import result_sha256
from medunlearn.registry.requests import (
    Plan,
    attempt_rows,
    check_method,
    complete_noop,
    finish,
    plan_request,
    retry,
    submit,
)
from medunlearn.registry.steps import UnlearnStep, Verification, VerifyStep, step_name
from medunlearn.registry.store import select_in
from medunlearn.registry.versions import (
    MODEL_FILE,
    active_dir,
    active_version,
    not_forgotten,
    require_local_data,
    version_row,
    withdrawn_indices,
)


def process_request(reg: str | os.PathLike, request: str | os.PathLike | dict | DeletionRequest, *,
           unlearn: UnlearnStep | None = None, verify: VerifyStep | None = None,
           data_root: str | None = None, seed: int | None = None,
           lock_timeout: float | None = None, download: bool = True,
           keep_superseded: int | None = None, log=None) -> dict:
    """Process a deletion request: validate, unlearn, gate, promote (or fall back).

    ``medunlearn forget`` and ``medunlearn registry consolidate`` call it; ``forget`` is its
    package-level alias (``medunlearn.registry.forget``).

    Args:
        reg: The registry folder.
        request: A request JSON file, a dict, or a :class:`DeletionRequest`.
        unlearn: The unlearn step (default: :func:`.steps.unlearn_candidate`, around
            ``run_unlearning``).
        verify: The gate step (default: :func:`.steps.gate_candidate`: ``evaluate_run``
            against the active version, then the safety ``gate``).
        data_root: MedMNIST folder (default: the one recorded at ``init``).
        seed: Seed of the unlearning (default: the registered model's seed).
        lock_timeout: Seconds to wait for another writer (default: wait).
        download: ``False``: refuse (before anything is written) when the model's data file is
            not on disk, instead of downloading it.
        keep_superseded: Keep the weights of the last N superseded versions for rollback
            (default: the registry's setting from ``init``, else 0: purge them; see
            :mod:`.residue`).
        log: Optional ``callable(str)`` for progress messages.

    Returns:
        The request's result: ``status`` ("completed" or "failed"), ``from_version``,
        ``to_version``, ``method``, ``attempts``, weights hashes, counts and timings;
        ``residue`` (when it made a new version: what was purged, kept and until when, and
        what the registry cannot reach); ``reused=True`` when the request had already been
        completed.

    Raises:
        RequestError: malformed request, unknown images, or an id reused with other content
            (nothing is changed).
        RegistryError: ``reg`` is not a registry.
    """
    t0 = time.perf_counter()
    reg = Path(reg)
    check_forget_options(reg, seed=seed, data_root=data_root)  # before anything is written
    req = request if isinstance(request, DeletionRequest) else load_request(request)
    if req.method is not None and not req.consolidate:  # a consolidation always retrains
        check_method(req)
    keep = _check_keep(keep_superseded)
    unlearn, verify = _steps(unlearn, verify)
    with writer_lock(reg, timeout=lock_timeout):
        conn = connect(reg)
        try:
            recover(reg, conn)
            if not download:
                require_local_data(reg, conn, data_root)
            session = features.open_session(reg, conn, active_version(conn))
            run = _Run(unlearn, verify, session, data_root, seed, keep, log)
            row = conn.execute("SELECT * FROM requests WHERE id = ?", (req.id,)).fetchone()
            if row is not None and row["content_sha256"] != req.content_sha256:
                raise RequestError(
                    f"Request id {req.id} was already submitted with different content "
                    f"(status {row['status']}). Nothing changed. Give a new request a new id; "
                    f"'medunlearn audit show {reg} {req.id} --out DIR' shows the original.")
            for p in conn.execute("SELECT id FROM requests WHERE status = 'pending' AND id != ? "
                                  "ORDER BY num", (req.id,)).fetchall():
                if log:
                    log(f"resuming pending request {p['id']}")
                _run_pending(reg, conn, p["id"], run)
            t_validate = time.perf_counter()
            if row is None:
                submit(reg, conn, req)
            elif row["status"] == "completed":
                return _stored_result(row)
            elif row["status"] == "failed":
                retry(reg, conn, req.id)
            row = conn.execute("SELECT * FROM requests WHERE id = ?", (req.id,)).fetchone()
            validate_seconds = time.perf_counter() - t_validate
            if row["status"] == "completed":  # a no-op: every image was already forgotten
                result = json.loads(row["result"])
            else:
                result = _run_pending(reg, conn, req.id, run)
            result["validate_seconds"] = validate_seconds
            result["total_seconds"] = time.perf_counter() - t0
            result["reused"] = False
            _after_requests(reg, conn, run)
            return result
        finally:
            conn.close()


def _check_keep(keep: int | None) -> int | None:
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0
                             or keep > 1000):
        raise RegistryError(f"keep_superseded must be a whole number from 0 to 1000, not "
                            f"{keep!r} (0 purges every superseded version's weights).")
    return keep


class _Run:
    """What every request of one writer session shares: the steps, the feature cache, options."""

    def __init__(self, unlearn: UnlearnStep, verify: VerifyStep, session: cache.Session,
                 data_root: str | None, seed: int | None, keep: int | None, log) -> None:
        self.unlearn, self.verify, self.session = unlearn, verify, session
        self.data_root, self.seed, self.keep, self.log = data_root, seed, keep, log


def _after_requests(reg: Path, conn: sqlite3.Connection, run: _Run) -> None:
    """Keep only the active version's features (without withdrawn images) and vouch for them;
    delete staging folders and the work runs of per-image checks."""
    data_root = run.data_root or get_meta(conn, "data_root") or None
    tables = features.keep_active_features(active_dir(reg, conn), run.session,
                                           withdrawn=withdrawn_indices(conn),
                                           data_root=data_root)
    features.record_features(reg, conn, active_version(conn), tables)
    residue.clean_scratch(reg)


def _steps(unlearn: UnlearnStep | None,
           verify: VerifyStep | None) -> tuple[UnlearnStep, VerifyStep]:
    """The steps given, else the production ones (looked up now, so that a test can replace
    them for a whole command: ``medunlearn.testing.fake_registry_steps``)."""
    return unlearn or steps.unlearn_candidate, verify or steps.gate_candidate


def _stored_result(row: sqlite3.Row) -> dict:
    result = json.loads(row["result"]) if row["result"] else {}
    return result | {"reused": True}


def resume(reg: str | os.PathLike, *, unlearn: UnlearnStep | None = None,
           verify: VerifyStep | None = None, data_root: str | None = None,
           seed: int | None = None, download: bool = True, log=None) -> list[dict]:
    """Clean up after a crash and finish every pending request (the arguments are those of
    :func:`process_request`).

    Returns:
        The results of the requests finished now.
    """
    reg = Path(reg)
    unlearn, verify = _steps(unlearn, verify)
    with writer_lock(reg):
        conn = connect(reg)
        try:
            recover(reg, conn)
            if not download:
                require_local_data(reg, conn, data_root)
            run = _Run(unlearn, verify, features.open_session(reg, conn, active_version(conn)),
                       data_root, seed, None, log)
            done = [_run_pending(reg, conn, p["id"], run)
                    for p in conn.execute("SELECT id FROM requests WHERE status = 'pending' "
                                          "ORDER BY num").fetchall()]
            _after_requests(reg, conn, run)
            return done
        finally:
            conn.close()


# --------------------------------------------------------------------------- recovery


def recover(reg: Path, conn: sqlite3.Connection) -> list[str]:
    """Remove what a crashed run left behind (call with the writer lock held).

    First refuses a registry in which a file or folder the registry uses is a symbolic link or
    not a plain file or folder (:func:`.store.check_plain`), whose ``LEDGER_HEAD`` is missing or
    behind, or whose tables do not match its ledger (:class:`AuditError`; nothing is changed),
    and brings a head left behind by a crash up to date. Then removes every folder under
    ``REG/staging``, the version folder a crash between renaming a candidate into place and
    committing its promotion left (``versions/<newest + 1>``), and finishes an interrupted
    purge. Anything else in ``REG/versions`` is not the registry's: ``audit verify`` reports it
    and nothing deletes it.

    Returns:
        The paths removed.
    """
    replay.check_before_write(reg, conn)
    removed = []
    staging = reg / "staging"
    staging.mkdir(exist_ok=True)
    for child in sorted(staging.iterdir()):
        _remove_tree(child) if child.is_dir() else child.unlink(missing_ok=True)
        removed.append(str(child))
    newest = conn.execute("SELECT MAX(n) FROM versions").fetchone()[0] or 0
    orphan = reg / "versions" / str(newest + 1)
    if orphan.is_dir():
        _remove_tree(orphan)
        removed.append(str(orphan))
    removed += residue.apply_purges(reg, ledger.entries(conn))
    if removed:
        _fsync_dir(staging)
        _fsync_dir(reg / "versions")
    return removed


def _remove_tree(path: Path) -> None:
    """Delete a folder the registry made (never through a symbolic link)."""
    if path.is_symlink():
        raise RegistryError(f"{path} is a symbolic link; the registry deletes only its own plain "
                            "folders. Remove the link and run the command again.")
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- attempts


#: Errors of the environment (missing data, unreadable model, ...): the request stays pending so
#: that it can be resumed once fixed, instead of being recorded as a failed method.
ENVIRONMENT_ERRORS = (DataError, CheckpointError, OutputExistsError, OutputError, RegistryError,
                      OSError)


def _run_pending(reg: Path, conn: sqlite3.Connection, rid: str, run: _Run) -> dict:
    """Run the attempts of a pending request until one passes or the chain is exhausted."""
    log = run.log
    plan = plan_request(reg, conn, rid)
    active = active_version(conn)
    if plan.own and not set(plan.own) & set(not_forgotten(conn)):
        # a retried request whose images an exact retraining (a consolidation, or the retrain
        # fallback of a later request) has forgotten meanwhile: nothing is left to do
        with store.write(reg, conn):
            return complete_noop(conn, rid, active, "its images were forgotten meanwhile by "
                                 "an exact retraining")
    seed = int(get_meta(conn, "seed", "0")) if run.seed is None else run.seed
    data_root = run.data_root or get_meta(conn, "data_root") or None
    done = len(attempt_rows(conn, rid))
    for k in range(done - plan.first_attempt, len(plan.chain)):
        method, n = plan.chain[k], plan.first_attempt + k + 1
        if log:
            log(f"request {rid}: attempt {n} with {method} (forget {len(plan.forget)}, "
                f"exclude {len(plan.exclude)} earlier images)")
        started = ledger.now_iso()
        stage, ver, summary = _attempt(reg, conn, plan, method, n, active, run, seed=seed,
                                       data_root=data_root)
        if ver is not None and ver.passed:
            return _promote(reg, conn, plan, method, n, active, stage, ver, summary, started,
                            keep=_keep(conn, run.keep), log=log, data_root=data_root)
        outcome = "error" if ver is None else "failed"
        with store.write(reg, conn):
            _record_attempt(conn, rid, n, method, outcome, ver, summary, started)
        store.stage(f"after-{outcome}-attempt")
        _remove_tree(stage)
        if log:
            log(f"  attempt {n} ({method}) " + (f"failed: {summary['error']}" if ver is None
                else f"did not pass the safety gate: {'; '.join(ver.reasons)}"))
    now = ledger.now_iso()
    with store.write(reg, conn):
        result = finish(conn, rid, "failed", active, None, None, now)
        ledger.append(conn, "failed", {"status": "failed", "version": active,
                                       "result_sha256": result_sha256(result)}, request_id=rid,
                      created=now)
    return result


def _keep(conn: sqlite3.Connection, keep: int | None) -> int:
    """The number of superseded versions whose weights are kept: the request's option, else
    the registry's setting (``init --keep-superseded``), else 0."""
    return keep if keep is not None else int(get_meta(conn, "keep_superseded", "0") or 0)


def _takes(step, name: str) -> bool:
    try:
        return name in inspect.signature(step).parameters
    except (TypeError, ValueError):
        return False


def _attempt(reg: Path, conn: sqlite3.Connection, plan: Plan, method: str, n: int, active: int,
             run: _Run, *, seed: int,
             data_root: str | None) -> tuple[Path, Verification | None, dict]:
    """Unlearn from the active version into ``REG/staging`` and gate the candidate.

    The steps get the registry's feature cache (``cache=``) when they take it; the summary
    records what was taken from it (:func:`.features.usage`). A verify step that takes
    ``shadows=`` gets the registry's shadow set (None: it has none) and ``registry=``.

    Returns:
        ``(candidate folder, the gate's verdict or None when a step raised, attempt summary)``.

    Raises:
        One of :data:`ENVIRONMENT_ERRORS` (an OSError, e.g. a full disk, as a
        :class:`RegistryError`): the request stays pending (nothing recorded), to be retried
        without an attempt counted against it.
    """
    unlearn, verify = run.unlearn, run.verify
    before = features.counters(run.session)
    stage = reg / "staging" / f"r{plan.num}-a{n}"
    _remove_tree(stage)
    active_path = reg / version_row(conn, active)["path"]
    # a sharded consolidation starts from the last exact version (its clean checkpoints); the
    # candidate is still gated against the active version
    start = active if plan.start is None else plan.start
    start_path = reg / version_row(conn, start)["path"]
    summary = {"forget_count": len(plan.forget), "exclude_count": len(plan.exclude),
               "from_version": active, "steps": {"unlearn": step_name(unlearn),
                                                 "verify": step_name(verify)}}
    gate_extra = {"shadows": shadows.for_gate(reg, conn), "registry": reg} if _takes(
        verify, "shadows") else {}
    if start != active:
        summary["start_version"] = start
    t0 = time.perf_counter()
    try:
        summary["unlearn_metrics"] = unlearn(
            start_path, method=method, forget=plan.forget, exclude=plan.exclude, out=stage,
            seed=seed, data_root=data_root,
            **({"cache": run.session} if _takes(unlearn, "cache") else {}))
        summary["unlearn_seconds"] = time.perf_counter() - t0
        shards = shards_retrained(summary["unlearn_metrics"], start)
        if shards is not None:
            summary["shards"] = shards
        store.stage("after-unlearn")
        _write_excluded(conn, stage, plan.exclude)
        t1 = time.perf_counter()
        ver = verify(stage, original=active_path, data_root=data_root, **gate_extra,
                     **({"cache": run.session} if _takes(verify, "cache") else {}))
        summary["verify_seconds"] = time.perf_counter() - t1
        summary["verdict"] = {"passed": bool(ver.passed), "reasons": list(ver.reasons),
                              "checks": list(ver.checks)}
        summary["metrics"] = getattr(ver, "metrics", None)
        summary["weights_sha256"] = sha256_file(stage / MODEL_FILE)
        summary["features"] = features.usage(run.session, before)
        store.stage("after-verify")
        return stage, ver, summary
    except OSError as exc:
        _remove_tree(stage)
        raise RegistryError(
            f"Request {plan.rid}: the environment failed during attempt {n} ({method}): "
            f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}. This is not "
            "a failure of the method, so no attempt was recorded and the request stays "
            f"pending. Fix it (e.g. free disk space) and run 'medunlearn registry resume "
            f"{reg}'.") from exc
    except ENVIRONMENT_ERRORS:
        _remove_tree(stage)
        raise
    except Exception as exc:  # a method or the evaluation failed: record it, fall back
        summary.setdefault("unlearn_seconds", time.perf_counter() - t0)
        summary["error"] = f"{type(exc).__name__}: {exc}"
        summary["features"] = features.usage(run.session, before)
        return stage, None, summary


def _record_attempt(conn: sqlite3.Connection, rid: str, n: int, method: str, status_: str,
                    ver: Verification | None, summary: dict, started: str) -> None:
    """Record an attempt and its ledger entry (inside the caller's transaction)."""
    reasons = list(ver.reasons) if ver else [summary.get("error", "")]
    passed = bool(ver and ver.passed)
    finished = ledger.now_iso()
    summary_json = ledger.canonical_json(summary)
    conn.execute("INSERT INTO attempts(request_id, n, method, status, passed, reasons, summary, "
                 "started, finished) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (rid, n, method, status_, int(passed), ledger.canonical_json(reasons),
                  summary_json, started, finished))
    ledger.append(conn, "attempt", {
        "attempt": n, "method": method, "status": status_, "passed": passed, "reasons": reasons,
        "candidate_sha256": summary.get("weights_sha256"), "exclude_count":
        summary.get("exclude_count"), "forget_count": summary.get("forget_count"),
        "summary_sha256": ledger.sha256_text(summary_json), "started": started,
        "unlearn_seconds": summary.get("unlearn_seconds"),
        "verify_seconds": summary.get("verify_seconds"), "steps": summary.get("steps"),
        **({"shards": summary["shards"]} if summary.get("shards") else {}),
    }, request_id=rid, created=finished)


def shards_retrained(metrics: dict | None, start: int) -> dict | None:
    """What an exact unlearning of a sharded model retrained (None for any other model), from
    its run's ``metrics.json`` ``details`` (:func:`medunlearn.sharding.retrain_shards`): the
    version it started from, the shards retrained and from which slice, the shards kept byte for
    byte. Recorded in the attempt's ledger entry and the request's result."""
    details = (metrics or {}).get("details") or {}
    if "retrained_shards" not in details:
        return None
    retrained = [int(s) for s in details["retrained_shards"]]
    return {"start_version": start, "count": details.get("shards"),
            "slices": details.get("slices"), "retrained": retrained,
            "from_slice": details.get("from_slice"),
            "kept": [s for s in range(int(details.get("shards") or 0)) if s not in retrained],
            "retrained_stages": details.get("retrained_stages"),
            "total_stages": details.get("total_stages")}


EXCLUDED_FILE = "excluded.csv"  # read by evaluate_run: earlier-forgotten images, not retain


def _write_excluded(conn: sqlite3.Connection, run_dir: Path, exclude: list[int]) -> None:
    """List the excluded images in the candidate folder (``index,sha256,label``) so that the
    evaluation does not count earlier-forgotten images as retain members, and so that every
    version records what it was kept away from."""
    if not exclude or (run_dir / EXCLUDED_FILE).is_file():
        return
    write_index_rows(run_dir / EXCLUDED_FILE, ["index", "sha256", "label"],
                     sorted(tuple(r) for r in select_in(
                         conn, "SELECT idx, sha256, label FROM samples WHERE idx IN ({in})",
                         exclude)))


def _promote(reg: Path, conn: sqlite3.Connection, plan: Plan, method: str, n: int, active: int,
             stage: Path, ver: Verification, summary: dict, started: str, *, keep: int,
             log=None, data_root: str | None = None) -> dict:
    """Rename the candidate into ``REG/versions`` and make it official in one transaction,
    which also records the purge of the superseded versions' weights (:mod:`.residue`) and
    the shadow models retrained without the newly forgotten images (:mod:`.shadows`, trained
    first; the superseded shadows are purged); the files are deleted after the commit.

    A crash between the rename and the commit leaves an orphan folder that :func:`recover`
    removes; the attempt is then redone. A crash after the commit leaves files whose purge is
    recorded; :func:`recover` deletes them.
    """
    rid = plan.rid
    gone = set(shadows.forgotten(conn)) | set(plan.taken_out(method, set(not_forgotten(conn))))
    shadow_entry = shadows.prepare_refresh(reg, conn, gone, data_root=data_root, log=log)
    if shadow_entry is not None:
        store.stage("after-shadows")
    t2 = time.perf_counter()
    new_n = conn.execute("SELECT MAX(n) FROM versions").fetchone()[0] + 1
    final = reg / "versions" / str(new_n)
    if final.exists() or final.is_symlink():
        raise RegistryError(f"{final} exists but the registry has no version {new_n}; it was "
                            "not made by the registry, which will not overwrite it. Move it out "
                            "of the registry and run 'medunlearn registry resume'.")
    os.replace(stage, final)
    _fsync_dir(final.parent)
    store.stage("after-rename")
    files = store.folder_hashes(final)
    now = ledger.now_iso()
    with store.write(reg, conn):
        _record_attempt(conn, rid, n, method, "passed", ver, summary, started)
        conn.execute("INSERT INTO versions(n, path, weights_sha256, parent, request_id, "
                     "method, created) VALUES(?, ?, ?, ?, ?, ?, ?)",
                     (new_n, f"versions/{new_n}", summary["weights_sha256"], active, rid,
                      method, now))
        set_meta(conn, "active_version", str(new_n))
        # An exact retraining also leaves out the images of failed requests (they are in its
        # forget or exclude list): they are out of the model now, so they are marked too.
        newly = plan.taken_out(method, set(not_forgotten(conn)))
        select_in(conn, "UPDATE samples SET forgotten_in = ? WHERE idx IN ({in})", newly,
                  [new_n])
        select_in(conn, "UPDATE samples SET request_id = ? WHERE idx IN ({in})", plan.own,
                  [rid])
        ledger.append(conn, "promote", {
            "version": new_n, "parent": active, "weights_sha256": summary["weights_sha256"],
            "config_sha256": files.get("config.json"), "method": method,
            "attempt": n, "files": files}, request_id=rid, created=now)
        result = finish(conn, rid, "completed", active, new_n, method, now)
        result["promote_seconds"] = time.perf_counter() - t2
        if summary.get("shards"):
            result["shards"] = summary["shards"]
        purge = residue.plan(conn, new_n, keep)
        result["residue"] = purge
        result["shadows"] = shadows.summary(shadow_entry)
        conn.execute("UPDATE requests SET result = ? WHERE id = ?",
                     (ledger.canonical_json(result), rid))
        ledger.append(conn, "complete", {
            "status": "completed", "noop": False, "version": new_n, "forgotten": newly,
            **({"consolidated": plan.forget} if plan.consolidate else {}),
            "result_sha256": result_sha256(result)}, request_id=rid, created=now)
        ledger.append(conn, residue.PURGE_KIND, purge, request_id=rid, created=now)
        if shadow_entry is not None:
            ledger.append(conn, shadows.ENTRY_KIND, shadow_entry, request_id=rid, created=now)
    store.stage("after-commit")
    residue.apply_purges(reg, ledger.entries(conn))
    store.stage("after-purge")
    if log:
        log(f"  promoted version {new_n} ({method})")
    return result



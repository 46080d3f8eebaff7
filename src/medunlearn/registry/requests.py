"""Deletion requests in the registry: accept one, re-open a failed one, and decide what it asks.

:func:`resolve` maps a request to training indices (by hash, index or patient, with every
byte-identical copy); :func:`submit` records it as *pending* in one transaction (request, its
images, ledger entry), which withdraws its images from every later retain set at once, or
completes it as a no-op; :func:`retry` re-opens a failed request that is resubmitted unchanged.
:class:`Plan` is the policy of a pending request: which images it forgets or excludes, its method
chain, and what a promoted retraining takes out. :func:`finish` and :func:`complete_noop` record a
request's outcome (called inside the caller's transaction).

The attempts themselves (unlearn, gate, promote) are :mod:`.workflow`'s; this module writes no
files.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from medunlearn.config import EXACT_METHODS
from medunlearn.fileio import read_index_rows
from medunlearn.registry import ledger, store
from medunlearn.registry.db import get_meta
from medunlearn.registry.deletion_request import DeletionRequest
from medunlearn.registry.errors import RequestError
from medunlearn.registry.replay import LEDGER_ITEM_KEYS, result_sha256
from medunlearn.registry.store import select_in
from medunlearn.registry.versions import (
    active_version,
    approximate_steps,
    image_hashes,
    not_forgotten,
    sharded_start,
    withdrawn_indices,
)

# --------------------------------------------------------------------------- validate, submit


def check_method(req: DeletionRequest) -> None:
    """Refuse an unknown method name before anything is written (a typo must not silently fall
    back to retraining)."""
    from medunlearn.errors import ConfigError
    from medunlearn.methods import get_method_class

    try:
        get_method_class(req.method)
    except ConfigError as exc:
        raise RequestError(f"Request {req.id} was refused and nothing changed: {exc}") from None


def _patient_images(reg: Path, rid: str, patients: tuple[str, ...]) -> dict[str, list[int]]:
    """Training indices of each named patient, from the registered model's manifest.csv (in
    version 1, whose files the ledger vouches for).

    Raises:
        RequestError: the registered manifest has no patient_id column.
    """
    path = reg / "versions" / "1" / "manifest.csv"
    wanted = set(patients)
    out: dict[str, list[int]] = {}
    try:
        header, rows = read_index_rows(path)
    except OSError as exc:
        raise RequestError(f"Request {rid} names patients, but {path} cannot be read ({exc}); "
                           "name the images by hash instead.") from None
    if "patient_id" not in header:
        raise RequestError(
            f"Request {rid} names patients, but the registered model's manifest has no "
            "patient ids (its data was loaded without a patient column). Name the "
            "images by hash ('images') instead, or register a model trained with "
            "--patient-column.")
    for r in rows:
        if r["patient_id"] in wanted:
            out.setdefault(r["patient_id"], []).append(int(r["index"]))
    return out


def resolve(conn: sqlite3.Connection, req: DeletionRequest, reg: Path
             ) -> tuple[list[int], list[int], dict[int, str]]:
    """Map a request to training indices: ``(new, already_forgotten, sha256 by index)``.

    Raises:
        RequestError: unknown hashes or out-of-range indices (all listed).
    """
    found: dict[str, list[int]] = {}
    for r in select_in(conn, "SELECT idx, sha256 FROM samples WHERE sha256 IN ({in})",
                       req.images):
        found.setdefault(r["sha256"], []).append(r["idx"])
    unknown = [h for h in req.images if h not in found]
    n = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    bad = [i for i in req.indices if i >= n]
    by_patient = _patient_images(reg, req.id, req.patients) if req.patients else {}
    unknown_patients = [p for p in req.patients if p not in by_patient]
    if unknown or bad or unknown_patients:
        parts = []
        if unknown_patients:
            more = " ..." if len(unknown_patients) > 20 else ""
            parts.append(f"{len(unknown_patients)} patient id(s) have no image in this model's "
                         f"training manifest: {', '.join(unknown_patients[:20])}{more}")
        if unknown:
            more = " ..." if len(unknown) > 20 else ""
            parts.append(f"{len(unknown)} image hash(es) are not in this model's training "
                         f"manifest: {', '.join(unknown[:20])}{more}")
        if bad:
            parts.append(f"indices {bad[:20]} are out of range (the manifest has {n} images, "
                         f"indices 0..{n - 1})")
        raise RequestError(f"Request {req.id} was refused and nothing changed: "
                           f"{'; '.join(parts)}. Check that the hashes come from this model's "
                           "manifest.csv (medunlearn registry status shows the dataset).")
    named = {i for ids in found.values() for i in ids} | set(req.indices)
    named |= {i for ids in by_patient.values() for i in ids}
    # every byte-identical copy of a named image goes too (a copy under another patient id or
    # another index is the same image)
    copies = {r["sha256"] for r in select_in(conn, "SELECT sha256 FROM samples WHERE idx IN "
                                             "({in})", sorted(named))}
    targets = sorted(named | {r["idx"] for r in select_in(
        conn, "SELECT idx FROM samples WHERE sha256 IN ({in})", sorted(copies))})
    new, already, sha = [], [], {}
    for r in sorted(select_in(conn, "SELECT idx, sha256, forgotten_in FROM samples WHERE idx "
                              "IN ({in})", targets), key=lambda r: r["idx"]):
        sha[r["idx"]] = r["sha256"]
        (already if r["forgotten_in"] is not None else new).append(r["idx"])
    return new, already, sha


def method_chain(conn: sqlite3.Connection, requested: str | None) -> list[str]:
    """The methods to try in order: the requested one (or the registry's default), then the
    fallbacks that follow it in the registry's chain (else the chain's last, final fallback)."""
    chain = json.loads(get_meta(conn, "methods", "[]")) or ["retrain"]
    if requested is None:
        return chain
    if requested in chain:
        return chain[chain.index(requested):]
    return [requested] + ([chain[-1]] if chain[-1] != requested else [])


def consolidation_chain(start: int | None) -> list[str]:
    """The methods of a consolidation: ``sisa`` from the sharded model's last exact version
    ``start`` (only the shards whose data changed since), then retraining every shard; without
    such a version (a monolithic model, or its checkpoints purged), ``retrain``."""
    return ["retrain"] if start is None else ["sisa", "retrain"]


def submit(reg: Path, conn: sqlite3.Connection, req: DeletionRequest) -> None:
    """Validate and record a new request as pending (or complete it as a no-op).

    A deletion request withdraws its new images; a consolidation lists every image withdrawn so
    far and is a no-op when the active model is exact already.
    """
    active = active_version(conn)
    if req.consolidate:
        withdrawn = withdrawn_indices(conn)
        items, sha = {"consolidate": withdrawn}, image_hashes(conn, withdrawn)
        chain = consolidation_chain(sharded_start(reg, conn))
        noop = approximate_steps(conn) == 0 and not not_forgotten(conn)
        why = "the active model is exact already" if noop else None
    else:
        new, already, sha = resolve(conn, req, reg)  # raises before anything is written
        items, chain = {"forget": new, "already": already}, method_chain(conn, req.method)
        noop, why = not new, None
    withdraw = items.get("forget", [])
    now = ledger.now_iso()
    with store.write(reg, conn):
        conn.execute("INSERT INTO requests(id, subject, content_sha256, body, status, submitted, "
                     "from_version) VALUES(?, ?, ?, ?, 'pending', ?, ?)",
                     (req.id, req.subject, req.content_sha256, ledger.canonical_json(req.body()),
                      now, active))
        conn.executemany("INSERT INTO request_items(request_id, idx, role) VALUES(?, ?, ?)",
                         [(req.id, i, role) for role, idx in items.items() for i in idx])
        select_in(conn, "UPDATE samples SET request_id = ? WHERE idx IN ({in})", withdraw,
                  [req.id])
        ledger.append(conn, "request", {
            "request": req.body(), "content_sha256": req.content_sha256,
            **{LEDGER_ITEM_KEYS[role]: [{"index": i, "sha256": sha[i]} for i in idx]
               for role, idx in items.items()},
            "active_version": active, "methods": chain,
        }, request_id=req.id, created=now)
        if noop:
            complete_noop(conn, req.id, active, why)
    store.stage("after-submit")


def retry(reg: Path, conn: sqlite3.Connection, rid: str) -> None:
    """Re-open a failed request (same content resubmitted): its method chain starts again."""
    base = len(attempt_rows(conn, rid))
    row = conn.execute("SELECT body FROM requests WHERE id = ?", (rid,)).fetchone()
    added: list[int] = []
    if json.loads(row["body"]).get("consolidate"):  # images withdrawn since the first try
        have = set(request_items(conn, rid, "consolidate"))
        added = [i for i in withdrawn_indices(conn) if i not in have]
    with store.write(reg, conn):
        conn.execute("UPDATE requests SET status = 'pending', completed = NULL, result = ? "
                     "WHERE id = ?", (ledger.canonical_json({"retry_base": base}), rid))
        conn.executemany("INSERT INTO request_items(request_id, idx, role) VALUES(?, ?, ?)",
                         [(rid, i, "consolidate") for i in added])
        sha = image_hashes(conn, added)
        ledger.append(conn, "retry", {"previous_attempts": base} | (
            {"consolidate_added": [{"index": i, "sha256": sha[i]} for i in added]}
            if added else {}), request_id=rid)


# --------------------------------------------------------------------------- outcome


def complete_noop(conn: sqlite3.Connection, rid: str, active: int, why: str | None) -> dict:
    """Finish a request without a new version (inside the caller's transaction); ``why`` is
    recorded when the reason is not simply that every image was forgotten already."""
    now = ledger.now_iso()
    result = finish(conn, rid, "completed", active, active, None, now)
    reason = {}
    if why is not None:
        result["noop_reason"] = reason["reason"] = why
        conn.execute("UPDATE requests SET result = ? WHERE id = ?",
                     (ledger.canonical_json(result), rid))
    ledger.append(conn, "complete", {"status": "completed", "noop": True, "version": active,
                                     **reason, "forgotten": [],
                                     "result_sha256": result_sha256(result)},
                  request_id=rid, created=now)
    return result


def finish(conn: sqlite3.Connection, rid: str, status_: str, from_v: int, to_v: int | None,
           method: str | None, now: str) -> dict:
    """Set a request's final status and its result (inside the caller's transaction); returns
    the result. The caller appends the ledger entry that vouches for it."""
    result = _build_result(conn, rid, status_, from_v, to_v, method)
    conn.execute("UPDATE requests SET status = ?, completed = ?, to_version = ?, result = ? "
                 "WHERE id = ?", (status_, now, to_v, ledger.canonical_json(result), rid))
    return result


def _build_result(conn: sqlite3.Connection, rid: str, status_: str, from_v: int,
                  to_v: int | None, method: str | None) -> dict:
    attempts = attempt_rows(conn, rid)
    versions = {r["n"]: r["weights_sha256"] for r in conn.execute(
        "SELECT n, weights_sha256 FROM versions")}
    body = json.loads(conn.execute("SELECT body FROM requests WHERE id = ?", (rid,)).fetchone()[0])
    return {
        "request_id": rid, "consolidate": bool(body.get("consolidate")), "status": status_,
        "from_version": from_v, "to_version": to_v,
        "method": method, "weights_before": versions.get(from_v),
        "weights_after": versions.get(to_v) if to_v is not None else None,
        "forgotten": len(request_items(conn, rid, "forget")),
        "already_forgotten": len(request_items(conn, rid, "already")),
        "consolidated": len(request_items(conn, rid, "consolidate")),
        "attempts": [{"n": a["n"], "method": a["method"], "status": a["status"],
                      "passed": a["passed"], "reasons": a["reasons"],
                      "unlearn_seconds": a["summary"].get("unlearn_seconds"),
                      "verify_seconds": a["summary"].get("verify_seconds")} for a in attempts],
        "unlearn_seconds": sum(a["summary"].get("unlearn_seconds") or 0 for a in attempts),
        "verify_seconds": sum(a["summary"].get("verify_seconds") or 0 for a in attempts),
    }


def attempt_rows(conn: sqlite3.Connection, rid: str) -> list[dict]:
    """The request's attempts in order, their JSON columns parsed."""
    out = []
    for r in conn.execute("SELECT * FROM attempts WHERE request_id = ? ORDER BY n", (rid,)):
        d = dict(r)
        d["reasons"] = json.loads(d["reasons"])
        d["summary"] = json.loads(d["summary"])
        d["passed"] = bool(d["passed"])
        out.append(d)
    return out


def request_items(conn: sqlite3.Connection, rid: str, role: str) -> list[int]:
    """The training indices a request lists under ``role`` (``forget``, ``already`` or
    ``consolidate``)."""
    return [r[0] for r in conn.execute(
        "SELECT idx FROM request_items WHERE request_id = ? AND role = ? ORDER BY idx",
        (rid, role))]


# --------------------------------------------------------------------------- policy


@dataclass
class Plan:
    """What a pending request asks of the model (the policy; no SQL or files here).

    A deletion request forgets its own new images (``own``) with its method chain; a
    consolidation owns no images and retrains without every image withdrawn so far.
    """

    rid: str
    num: int
    consolidate: bool
    forget: list[int]  # left out of the candidate's training: the request's images
    exclude: list[int]  # withdrawn earlier: in neither the forget nor the retain set
    chain: list[str]
    first_attempt: int  # attempts before a retry are kept; this one's numbers follow them
    # the version the attempts start from (None: the active one): a sharded consolidation's
    # last exact version (versions.sharded_start), whose clean checkpoints sisa retrains from
    start: int | None = None

    @property
    def own(self) -> list[int]:
        """Images this request withdraws (marked forgotten by it on promotion)."""
        return [] if self.consolidate else self.forget

    def taken_out(self, method: str, still_in: set[int]) -> list[int]:
        """Images out of a promoted candidate that the registry did not yet count as forgotten:
        the request's own, and after an exact retraining every withdrawn image it left out."""
        swept = set(self.forget) | set(self.exclude) if method in EXACT_METHODS else set()
        return sorted(set(self.own) | (swept & still_in))


def plan_request(reg: Path, conn: sqlite3.Connection, rid: str) -> Plan:
    """The :class:`Plan` of a pending request, from its rows and every image withdrawn so far
    (and for a consolidation, the registry's :func:`.versions.sharded_start`)."""
    row = conn.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone()
    body = json.loads(row["body"])
    consolidate = bool(body.get("consolidate"))
    # a consolidation retrains without every earlier-forgotten image: they are its forget set
    forget_idx = request_items(conn, rid, "consolidate" if consolidate else "forget")
    exclude = [i for i in withdrawn_indices(conn) if i not in set(forget_idx)]
    start = sharded_start(reg, conn) if consolidate else None
    chain = consolidation_chain(start) if consolidate else method_chain(conn, body.get("method"))
    base = int(json.loads(row["result"] or "{}").get("retry_base", 0)) if row["status"] == \
        "pending" and row["result"] else 0
    return Plan(rid, row["num"], consolidate, forget_idx, exclude, chain, base, start)



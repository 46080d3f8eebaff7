"""Reading a registry: one consistent, read-only snapshot, checked against its ledger.

Every reader (``registry status``, ``registry manifest``, ``audit verify``, certificates) goes
through :func:`snapshot`, so each one

* opens ``registry.db`` **read-only** (``mode=ro``; on read-only media, where SQLite cannot keep
  its shared-memory file, ``immutable=1``), and never creates a file in the registry: an auditor
  can verify a copy on a write-protected disk;
* reads inside one SQLite read transaction, so the tables, the ledger and the head file it
  compares belong to the same commit even while a writer commits next to it;
* runs the same integrity check (:func:`integrity_problems`): the head file, the hash chain, every
  table row and version file replayed from the ledger (:mod:`.replay`), and the per-image check
  files (:mod:`.proof_records`).

A problem seen while a writer moves the ledger or the head file is read again from a fresh
snapshot; a problem is reported only when two snapshots at the same ledger head and head file
agree, so a commit next to a reader never reads as tampering.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from medunlearn.fileio import write_index_rows
from medunlearn.registry import ledger, proof_records, replay, shadow_records, store
from medunlearn.registry.db import DB_FILE, get_meta, require_registry
from medunlearn.registry.errors import AuditError, RegistryError
from medunlearn.registry.versions import active_version, approximate_steps, not_forgotten

#: Snapshots tried before problems that keep changing are reported as they stand.
ATTEMPTS = 8


@dataclass
class Snapshot:
    """An open read transaction on a registry and the integrity check made in it."""

    reg: Path
    conn: sqlite3.Connection
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    crashed: bool = False  # the head file is behind only because a run was killed


def _writable(reg: Path) -> bool:
    return os.access(reg, os.W_OK) and os.access(reg / DB_FILE, os.W_OK)


def _connect_uri(path: Path, *, immutable: bool) -> sqlite3.Connection:
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" + ("&immutable=1" if immutable else "")
    conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 60000")
    return conn


def open_readonly(reg: str | os.PathLike) -> sqlite3.Connection:
    """``registry.db`` opened read-only; nothing is created in the registry folder on read-only
    media (a copy with an unmerged write-ahead log is read from a private temporary copy).

    Raises:
        RegistryError: ``reg`` is not a registry, or its database cannot be read.
    """
    reg = Path(reg)
    require_registry(reg)
    path = reg / DB_FILE
    wal = path.with_name(DB_FILE + "-wal")
    try:
        if _writable(reg):
            conn = _connect_uri(path, immutable=False)
        elif wal.is_file() and wal.stat().st_size:
            tmp = Path(tempfile.mkdtemp(prefix="medunlearn-ro-"))
            for name in (DB_FILE, DB_FILE + "-wal"):
                shutil.copyfile(reg / name, tmp / name)
            conn = sqlite3.connect(str(tmp / DB_FILE), timeout=60.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the log into the private copy
            conn.execute("PRAGMA journal_mode = DELETE")
            shutil.rmtree(tmp, ignore_errors=True)  # the open connection keeps its file
        else:
            conn = _connect_uri(path, immutable=True)
        if conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
                        ).fetchone() is None:
            conn.close()
            raise RegistryError(f"{path} is not a medunlearn registry database (no meta table).")
    except (sqlite3.Error, OSError) as exc:
        raise RegistryError(f"The registry database {path} cannot be opened or changed ({exc}). "
                            "Reading it needs no write access: check that it is a medunlearn "
                            "registry database and that it and its registry.db-wal (if any) are "
                            "readable files.") from None
    return conn


def _head_files(reg: Path) -> tuple:
    out = []
    for name in (store.HEAD_FILE, store.INTENT_FILE):
        try:
            out.append((reg / name).read_bytes())
        except OSError:
            out.append(None)
    return tuple(out)


def integrity_problems(reg: Path, conn: sqlite3.Connection) -> tuple[list[str], bool]:
    """``(problems, crashed)``: the head file against the ledger (``crashed``: behind only
    because a run was killed after its commit), the chain, every table row, version file and
    per-image check file against the ledger. Run it inside a read transaction."""
    head_problems, crashed = store.head_state(reg, conn)
    entries = ledger.entries(conn)
    return (head_problems + replay.ledger_problems(conn, reg)
            + proof_records.missing_records(reg, entries)), crashed


@contextlib.contextmanager
def snapshot(reg: str | os.PathLike) -> Iterator[Snapshot]:
    """A read-only, consistent view of the registry and its integrity check (see the module
    doc). The connection is inside a read transaction until the block ends."""
    reg = Path(reg)
    conn = open_readonly(reg)
    try:
        seen = None
        for attempt in range(ATTEMPTS):
            files = _head_files(reg)
            conn.execute("BEGIN")
            head = ledger.head(conn)  # the first read fixes the snapshot
            if _head_files(reg) != files:  # a writer moved the head file meanwhile
                conn.execute("ROLLBACK")
                continue
            problems, crashed = integrity_problems(reg, conn)
            state = (head, files, problems)
            if not problems or state == seen or attempt == ATTEMPTS - 1:
                break
            seen = state  # read again: a writer may have been half-way
            conn.execute("ROLLBACK")
            time.sleep(0.02)
        else:  # the head file kept moving: read what is there
            conn.execute("BEGIN")
            problems, crashed = integrity_problems(reg, conn)
        snap = Snapshot(reg, conn, problems,
                        proof_records.folder_warnings(reg, ledger.entries(conn)), crashed)
        if crashed:
            snap.warnings.insert(0, f"{reg / store.HEAD_FILE} is one commit behind because a "
                                 "run was interrupted after its commit; the next 'forget' or "
                                 "'registry resume' brings it up to date")
        yield snap
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def refuse_problems(snap: Snapshot, what: str) -> None:
    """Raise :class:`AuditError` (naming the first problem) when the snapshot fails its check."""
    if snap.problems:
        more = len(snap.problems) - 1
        raise AuditError(
            f"{what}: the registry {snap.reg} fails its audit ({snap.problems[0]}"
            f"{f'; and {more} more' if more else ''}). Run 'medunlearn audit verify {snap.reg}' "
            "for the full list and restore the registry from a backup.")


def export_manifest(reg: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the registry's manifest as CSV: ``index,sha256,label,forgotten_in,request_id``.

    ``forgotten_in`` is the first model version without the image (empty: never forgotten);
    ``request_id`` is the request that withdrew it. Hashes only, never pixels.

    Raises:
        AuditError: the registry fails its audit (nothing is written).
    """
    with snapshot(reg) as snap:
        refuse_problems(snap, "No manifest was written")
        rows = snap.conn.execute("SELECT idx, sha256, label, forgotten_in, request_id FROM "
                                 "samples ORDER BY idx").fetchall()
    return write_index_rows(out, ["index", "sha256", "label", "forgotten_in", "request_id"],
                            rows)


def _request_summary(r: sqlite3.Row) -> dict:
    return {"id": r["id"], "subject": r["subject"], "status": r["status"],
            "submitted": r["submitted"], "completed": r["completed"],
            "from_version": r["from_version"], "to_version": r["to_version"]}


def status(reg: str | os.PathLike) -> dict:
    """The registry at a glance: active version, versions, pending and completed requests, and
    its audit (one consistent snapshot; see :func:`snapshot`).

    Raises:
        RegistryError: ``reg`` is not a registry.
    """
    with snapshot(reg) as snap:
        conn, problems = snap.conn, snap.problems
        active = active_version(conn)
        versions = [dict(r) for r in conn.execute("SELECT * FROM versions ORDER BY n")]
        reqs = conn.execute("SELECT * FROM requests ORDER BY num").fetchall()
        n_samples = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        forgotten = conn.execute(
            "SELECT COUNT(*) FROM samples WHERE forgotten_in IS NOT NULL").fetchone()[0]
        withdrawn = conn.execute(
            "SELECT COUNT(*) FROM samples WHERE request_id IS NOT NULL").fetchone()[0]
        seq, head = ledger.head(conn)
        steps, unforgotten = approximate_steps(conn), not_forgotten(conn)
        by_status: dict[str, list] = {"pending": [], "completed": [], "failed": []}
        for r in reqs:
            by_status.setdefault(r["status"], []).append(_request_summary(r))
        return {
            "registry": str(Path(reg)), "dataset": get_meta(conn, "dataset"),
            "methods": json.loads(get_meta(conn, "methods", "[]")),
            "active_version": next((v for v in versions if v["n"] == active), {"n": active}),
            "versions": versions, "requests": by_status,
            "samples": {"total": n_samples, "forgotten": forgotten, "withdrawn": withdrawn},
            "exactness": {"approximate_steps": steps,
                          "withdrawn_not_forgotten": len(unforgotten),
                          "exact": steps == 0 and not unforgotten and not problems},
            "ledger": {"entries": seq, "head": head},
            "shadows": _shadows(Path(reg), ledger.entries(conn)),
            "audit": {"ok": not problems, "problems": problems, "warnings": snap.warnings},
        }


def _shadows(reg: Path, entries: list[dict]) -> dict | None:
    """The shadow models in use (:mod:`.shadow_records`), or None."""
    last = shadow_records.latest(entries)
    if last is None:
        return None
    body = last["body"]
    return {"generation": body.get("generation"), "k": body.get("k"),
            "base_seed": body.get("base_seed"), "excluded": len(body.get("excluded") or []),
            "folder": str(shadow_records.folder(reg, body.get("generation"))),
            "ledger_seq": last["seq"]}

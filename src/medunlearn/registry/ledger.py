"""The append-only audit ledger: a hash chain over canonical JSON entries.

Each entry ``{seq, kind, request_id, created, body, prev_hash}`` is serialised as canonical JSON
(sorted keys, no spaces, UTF-8) and hashed with SHA-256; the next entry stores that hash as its
``prev_hash``. Editing, removing or reordering any entry breaks the chain from that point on.

Removing the *last* entries leaves a shorter valid chain, so the head (sequence number and hash)
is also written to ``REG/LEDGER_HEAD`` with every commit (see :mod:`medunlearn.registry.store`);
``audit verify`` reports a ledger that is behind or ahead of its head file. Someone who can
rewrite the database *and* the head file is caught only by an anchor kept outside the registry
(see docs/registry.md).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime

from medunlearn.fileio import to_jsonable

GENESIS = "0" * 64
HEAD_FILE = "LEDGER_HEAD"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def canonical_json(obj) -> str:
    """Canonical JSON: sorted keys, no whitespace, non-ASCII kept, strict floats."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_hash(seq: int, kind: str, request_id: str | None, created: str, body: dict,
               prev_hash: str) -> str:
    """SHA-256 of the canonical JSON of one ledger entry."""
    return sha256_text(canonical_json({
        "seq": seq, "kind": kind, "request_id": request_id, "created": created, "body": body,
        "prev_hash": prev_hash,
    }))


def append(conn: sqlite3.Connection, kind: str, body: dict, *,
           request_id: str | None = None, created: str | None = None) -> dict:
    """Append an entry; call inside a :func:`~medunlearn.registry.store.write` transaction.

    ``created`` is the entry's time (default: now); pass the time stored in the table row the
    entry vouches for, so that ``audit verify`` can check that row's timestamp.

    Returns:
        The entry as stored (with ``seq`` and ``hash``).
    """
    last = conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    seq = last["seq"] + 1 if last else 1
    prev = last["hash"] if last else GENESIS
    created = created or now_iso()
    body = json.loads(canonical_json(body))
    h = entry_hash(seq, kind, request_id, created, body, prev)
    conn.execute("INSERT INTO ledger(seq, kind, request_id, created, body, prev_hash, hash) "
                 "VALUES(?, ?, ?, ?, ?, ?, ?)",
                 (seq, kind, request_id, created, canonical_json(body), prev, h))
    return {"seq": seq, "kind": kind, "request_id": request_id, "created": created, "body": body,
            "prev_hash": prev, "hash": h}


def entries(conn: sqlite3.Connection, request_id: str | None = None) -> list[dict]:
    """Ledger entries in order (all, or those of one request)."""
    sql = "SELECT * FROM ledger"
    args: tuple = ()
    if request_id is not None:
        sql += " WHERE request_id = ?"
        args = (request_id,)
    out = []
    for r in conn.execute(sql + " ORDER BY seq", args):
        d = dict(r)
        try:
            d["body"] = json.loads(d["body"])
        except ValueError:
            pass
        out.append(d)
    return out


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    """``(seq, hash)`` of the last entry (``(0, GENESIS)`` for an empty ledger)."""
    last = conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    return (last["seq"], last["hash"]) if last else (0, GENESIS)


def chain_problems(conn: sqlite3.Connection) -> list[str]:
    """Check the hash chain (the head file is checked by :mod:`medunlearn.registry.store`).

    Returns:
        Human-readable problems, each naming the entry (empty when the ledger is intact).
    """
    problems: list[str] = []
    prev = GENESIS
    expected_seq = 1
    rows = conn.execute("SELECT * FROM ledger ORDER BY seq").fetchall()
    for r in rows:
        seq, kind = r["seq"], r["kind"]
        name = f"ledger entry {seq} ({kind}, request {r['request_id']})"
        if seq != expected_seq:
            problems.append(f"{name}: expected sequence number {expected_seq}; entries "
                            f"{expected_seq}..{seq - 1} were removed or renumbered")
        expected_seq = seq + 1
        try:
            body = json.loads(r["body"])
        except ValueError:
            problems.append(f"{name}: the body is not valid JSON (edited)")
            prev = r["hash"]
            continue
        if canonical_json(body) != r["body"]:
            problems.append(f"{name}: the body is not in canonical form (edited)")
        if r["prev_hash"] != prev:
            problems.append(f"{name}: prev_hash does not match the hash of the entry before it "
                            "(an entry was edited, removed or reordered)")
        recomputed = entry_hash(seq, kind, r["request_id"], r["created"], body, r["prev_hash"])
        if recomputed != r["hash"]:
            problems.append(f"{name}: its content does not match its hash (the entry was edited)")
        prev = r["hash"]
    return problems

"""Where a request's per-image forgetting proof is stored, reading it, and checking it.

The proof itself (:mod:`.forgetting_proof`) runs many trainings; its record is
``REG/forgetting_quality/<request>/forgetting_quality.json`` and its SHA-256 goes into a
``forgetting_quality`` ledger entry, so a certificate's claim is tamper-evident:
:func:`file_problems` (part of ``audit verify``) reports a stored file that no longer matches the
latest entry of its request.

A run killed between the ledger commit and the rename of the record leaves
``forgetting_quality.json.next`` matching the ledger; readers accept it, and the next proof of
the request finishes the rename (:func:`finish_interrupted`).

This module needs no other registry module (besides the ledger), so the ledger replay
(:mod:`.replay`) and the audit can use it without depending on the code that runs the proof.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from pathlib import Path

from medunlearn.io import _fsync_dir, sha256_file
from medunlearn.registry import ledger

FQ_DIR = "forgetting_quality"
ENTRY_KIND = "forgetting_quality"
RECORD_FILE = "forgetting_quality.json"
NEXT_SUFFIX = ".next"

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
    """The request's proof folder: its work runs and its record."""
    return Path(reg) / FQ_DIR / folder_name(request_id)


def command(reg: str | os.PathLike, request_id: str) -> str:
    """The command that runs the proof for a request."""
    return f"medunlearn audit forgetting-quality {reg} {request_id}"


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


def recorded(reg: str | os.PathLike, conn: sqlite3.Connection, request_id: str) -> dict | None:
    """The request's latest recorded proof: ``{"entry": ledger entry, "record": the stored
    record, or None when its file is missing or does not match the entry}``; None when the
    proof was never recorded."""
    e = latest_entries(ledger.entries(conn, request_id)).get(request_id)
    if e is None:
        return None
    path = _matching_file(Path(reg), request_id, e["body"].get("result_sha256"))
    record = json.loads(path.read_text(encoding="utf-8")) if path else None
    return {"entry": e, "record": record}


def finish_interrupted(reg: Path, conn: sqlite3.Connection, request_id: str) -> None:
    """Rename a ``.next`` record left by a run killed after its commit (writer lock held)."""
    found = recorded(reg, conn, request_id)
    final = folder(reg, request_id) / RECORD_FILE
    nxt = final.with_name(RECORD_FILE + NEXT_SUFFIX)
    if found and nxt.is_file() and sha256_file(nxt) == found["entry"]["body"].get(
            "result_sha256"):
        os.replace(nxt, final)
        _fsync_dir(final.parent)

"""Where a request's per-image forgetting proof is stored, reading it, and checking it.

The proof itself (:mod:`.forgetting_proof`) runs many trainings; its record is
``REG/forgetting_quality/<request>/forgetting_quality.json`` and its SHA-256 goes into a
``forgetting_quality`` ledger entry together with the SHA-256 of every scratch-run file of the
check, so a certificate's claim is tamper-evident: :func:`file_problems` (part of ``audit
verify``, and refused by every writer) reports a record or pending record that no entry vouches
for (changed or planted) and a scratch run changed after it was recorded; readers also report a
recorded result whose file was deleted (:func:`missing_records`; the check's command makes it
again, so writers do not refuse it).

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

from medunlearn.fileio import _fsync_dir, sha256_file
from medunlearn.registry import ledger

FQ_DIR = "forgetting_quality"
ENTRY_KIND = "forgetting_quality"
RECORD_FILE = "forgetting_quality.json"
NEXT_SUFFIX = ".next"
LOCK_FILE = "lock"  # held by a running check

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


def matching_file(reg: Path, request_id: str, want: str | None) -> Path | None:
    """The record file (or its ``.next``, see the module doc) whose SHA-256 is ``want``."""
    final = folder(reg, request_id) / RECORD_FILE
    for path in (final, final.with_name(RECORD_FILE + NEXT_SUFFIX)):
        if path.is_file() and sha256_file(path) == want:
            return path
    return None


def work_files(work: Path) -> dict[str, str]:
    """``{relative path: SHA-256}`` of a check folder's scratch runs (every file but the lock,
    the record and its ``.next``): recorded in the check's ledger entry."""
    skip = {LOCK_FILE, RECORD_FILE, RECORD_FILE + NEXT_SUFFIX}
    out = {}
    for p in sorted(work.rglob("*")) if work.is_dir() else []:
        rel = p.relative_to(work).as_posix()
        if p.is_file() and rel not in skip:
            out[rel] = sha256_file(p)
    return out


def running(work: Path) -> bool:
    """Whether a check holds the folder's lock now (its files are being written)."""
    import fcntl

    try:
        fd = os.open(work / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _folders(reg: Path, entries: list[dict]) -> list[tuple[Path, str | None, dict | None]]:
    """Every folder under ``REG/forgetting_quality``: ``(folder, request id or None, latest
    check entry or None)``."""
    root = reg / FQ_DIR
    if not root.is_dir():
        return []
    rids = {folder_name(e["request_id"]): e["request_id"] for e in entries
            if e["kind"] == "request" and e["request_id"]}
    latest = latest_entries(entries)
    out = []
    for child in sorted(root.iterdir()):
        rid = rids.get(child.name)
        out.append((child, rid, latest.get(rid) if rid else None))
    return out


def file_problems(reg: str | os.PathLike, entries: list[dict]) -> list[str]:
    """Every file under ``REG/forgetting_quality`` that its request's latest check entry does
    not vouch for: a record (or a pending ``.next``) that differs from the entry or has no entry
    at all (planted), a scratch run file changed after the check was recorded (a re-run would
    reuse it; files added since are warnings, :func:`folder_warnings`); and each entry for a
    request that was not completed when it was recorded. Scratch files that are gone are not a
    problem (derived data, may be purged). A folder whose check is running is checked only for
    its final record. The entries change no table."""
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
    for work, rid, e in _folders(reg, entries):
        final, nxt = work / RECORD_FILE, work / (RECORD_FILE + NEXT_SUFFIX)
        busy = running(work)
        if not work.is_dir():
            problems.append(f"{work} is not a folder (nothing the registry writes)")
            continue
        if e is None:
            for path in (final,) if busy else (final, nxt):
                if path.is_file():
                    problems.append(
                        f"{path}: no forgetting-quality check of "
                        f"{'request ' + rid if rid else 'any request'} is recorded in the "
                        "ledger, so this result was not made by the registry (planted)")
            continue
        want = e["body"].get("result_sha256")
        if final.is_file() and sha256_file(final) != want and not (
                nxt.is_file() and sha256_file(nxt) == want):
            problems.append(f"request {rid}: {final} has SHA-256 {sha256_file(final)} but ledger "
                            f"entry {e['seq']} recorded {want} (the forgetting-quality result "
                            "was changed)")
        if busy:
            continue
        if nxt.is_file() and sha256_file(nxt) != want:
            problems.append(f"request {rid}: {nxt} is a pending result that no ledger entry "
                            f"records (entry {e['seq']} recorded {want}; planted)")
        recorded_files = e["body"].get("files")
        if isinstance(recorded_files, dict):
            for rel, sha in work_files(work).items():
                if rel in recorded_files and sha != recorded_files[rel]:
                    problems.append(f"request {rid}: {work / rel} has SHA-256 {sha} but ledger "
                                    f"entry {e['seq']} recorded {recorded_files[rel]} (a scratch "
                                    "run of the check was changed; a re-run would reuse it)")
    return problems


def missing_records(reg: str | os.PathLike, entries: list[dict]) -> list[str]:
    """Each request whose latest check entry has no stored record (deleted): readers report it,
    writers do not refuse it (the check's command makes the record again)."""
    reg = Path(reg)
    problems = []
    for rid, e in sorted(latest_entries(entries).items()):
        if matching_file(reg, rid, e["body"].get("result_sha256")) is None and not (
                folder(reg, rid) / RECORD_FILE).is_file():
            problems.append(f"request {rid}: its forgetting-quality result "
                            f"{folder(reg, rid) / RECORD_FILE} is missing although ledger entry "
                            f"{e['seq']} recorded it (deleted); '{command(reg, rid)} --n "
                            f"{e['body'].get('n')}' makes it again")
    return problems


def folder_warnings(reg: str | os.PathLike, entries: list[dict]) -> list[str]:
    """Check folders the ledger cannot vouch for yet: a check running now, or the scratch runs
    of one that was interrupted before it was recorded (a re-run reuses them)."""
    out = []
    for work, _rid, e in _folders(Path(reg), entries):
        if running(work):
            out.append(f"a forgetting-quality check is running in {work}; its files are checked "
                       "once it is recorded")
            continue
        files = work_files(work)
        known = (e or {}).get("body", {}).get("files") if e else None
        extra = [rel for rel in files if not isinstance(known, dict) or rel not in known]
        if extra and (e is None or isinstance(known, dict)):
            out.append(f"{work} holds {len(extra)} scratch file(s) of a forgetting-quality check "
                       "that no ledger entry records (an interrupted run, or added by hand, e.g. "
                       f"{extra[0]}); a re-run reuses them: delete them to start from scratch")
    return out


def recorded(reg: str | os.PathLike, conn: sqlite3.Connection, request_id: str) -> dict | None:
    """The request's latest recorded proof: ``{"entry": ledger entry, "record": the stored
    record, or None when its file is missing or does not match the entry}``; None when the
    proof was never recorded."""
    e = latest_entries(ledger.entries(conn, request_id)).get(request_id)
    if e is None:
        return None
    path = matching_file(Path(reg), request_id, e["body"].get("result_sha256"))
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

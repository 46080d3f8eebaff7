"""The registry's store: its tables, the audit ledger and the ledger head file.

Everything the registry changes (:mod:`.versions`, :mod:`.requests`, :mod:`.workflow`,
:mod:`.forgetting_proof`) goes through :func:`write`: one SQLite transaction that also keeps
``REG/LEDGER_HEAD`` in step with the ledger. The head file is what lets ``audit verify`` notice
entries removed from the end of the ledger, so a writer refuses to touch a registry whose head
file is missing or behind (:func:`check_head`) instead of silently writing a new one.

The head is kept in step across crashes with an intent file: before ``COMMIT`` the new head is
written to ``REG/LEDGER_HEAD.next``; after it, to ``LEDGER_HEAD``, and the intent is removed. A
head file that is behind the ledger is therefore either a crash between the two (the intent
names the ledger's last entry: the next writer catches up) or tampering (refused).

Crash tests observe the workflow through :func:`stage`: production code names the points it
reaches, and a test installs a hook with :func:`set_stage_hook` (nothing reads the environment).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from medunlearn.fileio import atomic_write_text
from medunlearn.registry import ledger
from medunlearn.registry.errors import AuditError, RegistryError

HEAD_FILE = ledger.HEAD_FILE
INTENT_FILE = HEAD_FILE + ".next"

_stage_hook: Callable[[str], None] | None = None


def set_stage_hook(hook: Callable[[str], None] | None) -> None:
    """Call ``hook(name)`` at every named stage of a request (tests only; ``None`` removes it)."""
    global _stage_hook
    _stage_hook = hook


def stage(name: str) -> None:
    """Report that the workflow reached the point ``name`` (a no-op without a hook)."""
    if _stage_hook is not None:
        _stage_hook(name)


def select_in(conn: sqlite3.Connection, sql: str, ids: Sequence, params: Sequence = (),
              size: int = 500) -> list[sqlite3.Row]:
    """Run ``sql`` (which holds one ``{in}`` placeholder for ``IN (...)``) over ``ids`` in chunks
    small enough for SQLite's parameter limit; ``params`` come before the ids. Returns all rows."""
    ids = list(ids)
    rows: list[sqlite3.Row] = []
    for i in range(0, len(ids), size):
        chunk = ids[i:i + size]
        rows += conn.execute(sql.format(**{"in": ",".join("?" * len(chunk))}),
                             [*params, *chunk]).fetchall()
    return rows


# --------------------------------------------------------------------------- head file


def _read_head_file(path: Path) -> tuple[int, str] | None:
    """``(seq, hash)`` from a head or intent file; ``None`` if missing or unreadable."""
    try:
        seq, h = path.read_text(encoding="utf-8").split()
        return int(seq), h
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _write_head_file(path: Path, seq: int, h: str) -> None:
    atomic_write_text(path, f"{seq} {h}\n")


@contextlib.contextmanager
def write(reg: str | Path, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction that also moves ``LEDGER_HEAD`` to the ledger's new last entry."""
    reg = Path(reg)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise RegistryError(f"The registry {reg} cannot be changed ({exc}); its folder and "
                            "registry.db must be writable by you.") from None
    try:
        yield conn
        seq, h = ledger.head(conn)
        _write_head_file(reg / INTENT_FILE, seq, h)
        stage("before-commit")
    except BaseException:
        conn.execute("ROLLBACK")
        (reg / INTENT_FILE).unlink(missing_ok=True)
        raise
    conn.execute("COMMIT")
    stage("after-commit-before-head")
    _write_head_file(reg / HEAD_FILE, seq, h)
    (reg / INTENT_FILE).unlink(missing_ok=True)


def head_state(reg: str | Path, conn: sqlite3.Connection) -> tuple[list[str], bool]:
    """Compare ``LEDGER_HEAD`` with the ledger.

    Returns:
        ``(problems, catch_up)``: ``catch_up`` is true when the head file is behind only because
        a writer crashed between its commit and the head update (the intent file names the
        ledger's last entry); a writer then brings the head up to date.
    """
    reg = Path(reg)
    path = reg / HEAD_FILE
    seq, h = ledger.head(conn)
    if not path.exists():
        return [f"{path} is missing (deleted): the registry cannot show that no entries were "
                "removed from the end of its ledger"], False
    recorded = _read_head_file(path)
    if recorded is None:
        return [f"{path} is unreadable (edited)"], False
    hseq, hhash = recorded
    if hseq > seq:
        return [f"the ledger ends at entry {seq} but {path} records entry {hseq}: entries were "
                "removed from the end of the ledger"], False
    row = conn.execute("SELECT hash FROM ledger WHERE seq = ?", (hseq,)).fetchone()
    if hseq > 0 and (row is None or row[0] != hhash):
        return [f"ledger entry {hseq} does not have the hash recorded in {path} (the ledger or "
                "the head file was edited or replaced)"], False
    if hseq < seq:
        if _read_head_file(reg / INTENT_FILE) == (seq, h):
            return [], True
        return [f"{path} records entry {hseq} but the ledger goes on to entry {seq}: the head "
                "file was set back (or entries were appended behind its back)"], False
    return [], False


def check_head(reg: str | Path, conn: sqlite3.Connection) -> None:
    """Before writing: catch up after a crash, or refuse a registry whose head is missing or
    does not match its ledger.

    Raises:
        AuditError: the head file is missing, unreadable, behind or ahead of the ledger.
    """
    reg = Path(reg)
    problems, catch_up = head_state(reg, conn)
    if problems:
        raise AuditError(
            f"Refusing to change the registry {reg}: {problems[0]}. Writing now would hide "
            f"this. Run 'medunlearn audit verify {reg} --anchor SEQ:HASH' with a head you kept "
            "outside the registry, and restore the registry from a backup if it fails.")
    if catch_up:
        seq, h = ledger.head(conn)
        _write_head_file(reg / HEAD_FILE, seq, h)
    (reg / INTENT_FILE).unlink(missing_ok=True)



#: What may be inside a registry folder, by top-level name: ``"file"`` or ``"tree"`` (a folder
#: holding only plain files and folders).
LAYOUT = {"registry.db": "file", "registry.db-wal": "file", "registry.db-shm": "file",
          "registry.db-journal": "file", HEAD_FILE: "file", INTENT_FILE: "file", "lock": "file",
          "versions": "tree", "staging": "tree", "cache": "tree", "forgetting_quality": "tree",
          "shadows": "tree"}


def check_plain(reg: str | Path) -> None:
    """Before any write or delete: refuse a registry in which a file or folder the registry uses
    is a symbolic link or anything but a plain file or folder (a link could make a write or a
    clean-up reach outside the registry).

    Raises:
        RegistryError: naming the first such path.
    """
    import os
    import stat

    reg = Path(reg)
    for name, kind in LAYOUT.items():
        top = reg / name
        for path in [top, *(_walk(top) if kind == "tree" else [])]:
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise RegistryError(f"Cannot inspect {path} ({exc.strerror}); the registry "
                                    "folder must be readable by you.") from None
            ok = stat.S_ISREG(mode) if path == top and kind == "file" else (
                stat.S_ISDIR(mode) if path == top else stat.S_ISREG(mode) or stat.S_ISDIR(mode))
            if not ok:
                what = ("a symbolic link" if stat.S_ISLNK(mode) else
                        "not a plain file" if kind == "file" or path != top else
                        "not a plain folder")
                raise RegistryError(
                    f"Refusing to change the registry {reg}: {path} is {what}. The registry "
                    "writes and deletes only its own plain files and folders, so that nothing "
                    "outside it can be changed through it. Replace it by a plain "
                    f"{'file' if kind == 'file' else 'folder'} (or remove it; run 'medunlearn "
                    f"audit verify {reg}' afterwards).")


def _walk(top: Path) -> list[Path]:
    """Every path below ``top`` without following symbolic links (empty if it is not a
    folder)."""
    import os

    if not top.is_dir() or top.is_symlink():
        return []
    out = []
    for root, dirs, files in os.walk(top, followlinks=False):
        out += [Path(root) / n for n in sorted(dirs) + sorted(files)]
    return out


def folder_hashes(folder: Path) -> dict[str, str]:
    """``{relative path: SHA-256}`` of every file in a model version's folder (recorded in the
    ledger when the version is created, so that no file of it can change unnoticed)."""
    from medunlearn.fileio import sha256_file

    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}

"""SQLite storage of a registry, its schema, transactions and the writer lock.

A registry folder holds ``registry.db`` (SQLite in WAL mode, ``synchronous=FULL``) and a ``lock``
file. Every state change happens inside one ``BEGIN IMMEDIATE`` transaction, so a crash (even
``kill -9``) leaves the database at the previous commit. Writers also hold an exclusive
``fcntl.flock`` on ``lock`` for a whole request, so two ``forget`` processes run one after the
other instead of interleaving their model versions.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from medunlearn.registry.errors import RegistryError

DB_FILE = "registry.db"
LOCK_FILE = "lock"
SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- The training manifest of version 1: hashes and labels, never pixels.
-- request_id: the request that withdrew the image (set when the request is accepted);
-- forgotten_in: the model version from which on the image is forgotten.
CREATE TABLE IF NOT EXISTS samples (
    idx INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL,
    label INTEGER NOT NULL,
    request_id TEXT,
    forgotten_in INTEGER
);
CREATE INDEX IF NOT EXISTS samples_sha256 ON samples(sha256);
CREATE TABLE IF NOT EXISTS versions (
    n INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    parent INTEGER,
    request_id TEXT,
    method TEXT,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    num INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted TEXT NOT NULL,
    completed TEXT,
    from_version INTEGER,
    to_version INTEGER,
    result TEXT
);
-- role: 'forget' (forgotten by this request), 'already' (forgotten earlier: a no-op) or
-- 'consolidate' (left out of a consolidation's exact retraining; forgotten earlier).
CREATE TABLE IF NOT EXISTS request_items (
    request_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE IF NOT EXISTS attempts (
    request_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    method TEXT NOT NULL,
    status TEXT NOT NULL,
    passed INTEGER NOT NULL,
    reasons TEXT NOT NULL,
    summary TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT NOT NULL,
    PRIMARY KEY (request_id, n)
);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    request_id TEXT,
    created TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""


def connect(reg: str | os.PathLike, *, create: bool = False) -> sqlite3.Connection:
    """Open a registry's database (autocommit mode; use :func:`transaction` for changes).

    Raises:
        RegistryError: ``reg`` is not a registry folder (and ``create`` is false).
    """
    path = Path(reg) / DB_FILE
    if not create:
        require_registry(reg)
    try:
        conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise _db_error(path, exc) from None
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        if create:
            conn.executescript(SCHEMA)
        else:
            row = conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            if row is None:
                raise RegistryError(f"{path} is not a medunlearn registry database (no meta "
                                    "table).")
    except sqlite3.Error as exc:
        conn.close()
        raise _db_error(path, exc) from None
    except BaseException:
        conn.close()
        raise
    return conn


def require_registry(reg: str | os.PathLike) -> None:
    """Raise :class:`RegistryError` unless ``reg`` is a registry folder (nothing is created)."""
    if not (Path(reg) / DB_FILE).is_file():
        what = "does not exist" if not Path(reg).exists() else f"has no {DB_FILE}"
        raise RegistryError(
            f"{reg} is not a medunlearn registry (it {what}). Create one with "
            "'medunlearn registry init --model RUN_FOLDER --out REG', or check the path.")


def _db_error(path: Path, exc: sqlite3.Error) -> RegistryError:
    return RegistryError(
        f"The registry database {path} cannot be opened or changed ({exc}). The registry "
        "folder and its files must be readable and writable by you (SQLite keeps its journal "
        "next to the database), and the file must be a medunlearn registry database; check "
        "the permissions, or copy the registry to a writable folder to inspect it.")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: everything inside commits together or not at all."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def get_meta(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row["value"] if row else default


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) "
                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, str(value)))


@contextlib.contextmanager
def writer_lock(reg: str | os.PathLike, *, timeout: float | None = None,
                shared: bool = False) -> Iterator[None]:
    """Hold the registry's exclusive writer lock (``fcntl.flock`` on ``REG/lock``).

    ``shared=True`` takes a shared lock instead: readers that need a quiescent registry
    (``audit verify``) wait for a running request but not for each other.

    The operating system releases the lock when the process dies, so a killed ``forget`` never
    leaves the registry locked.

    Args:
        reg: The registry folder.
        timeout: Seconds to wait for another writer (``None``: wait as long as it takes).

    Raises:
        RegistryError: the lock was not obtained within ``timeout`` seconds.
    """
    require_registry(reg)  # never create a lock file in a folder that is not a registry
    path = Path(reg) / LOCK_FILE
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise RegistryError(f"The registry's lock file {path} is a symbolic link or not a plain "
                            "file; refusing to open it (it could create or lock a file outside "
                            "the registry). Replace it by an empty plain file.")
    try:
        # a reader's shared lock works on a read-only file (a registry on a read-only disk)
        flags = os.O_RDONLY if shared and path.exists() else os.O_RDWR | os.O_CREAT
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise RegistryError(f"Cannot open the registry's lock file {path} ({exc.strerror}); the "
                            "registry folder must be writable by you.") from None
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
                fcntl.flock(fd, mode | (fcntl.LOCK_NB if deadline else 0))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RegistryError(
                        f"Another medunlearn process is changing the registry {reg} (it holds "
                        f"{path}). Wait for it to finish and run the command again."
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

"""The results table of an experiment: SQLite, one row per cell and seed, plus a CSV export.

A row is inserted in a single transaction after the cell's run folder and evaluation exist, so
an interrupted experiment (even ``kill -9``) leaves either the complete row or none; the primary
key (the cell's fingerprint) makes a second insert of the same cell impossible. SQLite runs in
WAL mode with ``synchronous=FULL`` so committed rows survive a crash.

Columns: key columns (dataset, view, augment, forget, method, seed, ...), the headline metrics
as real columns (UA, RA, TA, test AUC, MIA, FNR, Global Risk, timings ...), the safety verdict,
and two JSON columns: ``metrics`` (every metric, flattened to dotted names) and ``config``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medunlearn.errors import MedUnlearnError
from medunlearn.fileio import atomic_write_text, to_jsonable

DB_FILE = "results.sqlite"
CSV_FILE = "results.csv"

KEY_COLUMNS = (
    ("key", "TEXT PRIMARY KEY"), ("experiment", "TEXT"), ("dataset", "TEXT"), ("view", "TEXT"),
    ("augment", "TEXT"), ("forget", "TEXT"), ("forget_ratio", "REAL"), ("method", "TEXT"),
    ("label", "TEXT"), ("seed", "INTEGER"),
)
#: Headline metrics stored as their own columns (names follow ``evaluation.directions``).
METRIC_COLUMNS = (
    "UA", "RA", "TA", "test_auc", "mia_efficacy", "attack_auc", "average_gap_pp", "fnr", "fpr",
    "global_risk", "original_fnr", "fnr_change", "original_global_risk", "unlearn_seconds",
    "retrain_seconds", "speedup", "original_train_seconds", "cell_seconds",
)
OTHER_COLUMNS = (
    ("gate_passed", "INTEGER"), ("gate_reasons", "TEXT"), ("run_dir", "TEXT"),
    ("original_dir", "TEXT"), ("reference_dir", "TEXT"), ("options", "TEXT"),
    ("metrics", "TEXT"), ("config", "TEXT"), ("created", "TEXT"),
)
COLUMNS = tuple(n for n, _ in KEY_COLUMNS) + METRIC_COLUMNS + tuple(n for n, _ in OTHER_COLUMNS)


class ResultsStoreError(MedUnlearnError):
    """The results database cannot be opened or does not look like an experiment's."""


def _schema() -> str:
    cols = [f"{n} {t}" for n, t in KEY_COLUMNS]
    cols += [f"{n} REAL" for n in METRIC_COLUMNS]
    cols += [f"{n} {t}" for n, t in OTHER_COLUMNS]
    return (f"CREATE TABLE IF NOT EXISTS results ({', '.join(cols)});\n"
            "CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, slug TEXT, error TEXT, "
            "log TEXT, attempts INTEGER, created TEXT);\n")


class ResultsStore:
    """An experiment's SQLite results table.

    Args:
        path: The database file, or an experiment's results folder (``results.sqlite`` inside).
        create: Create the database if it is missing (otherwise a missing file is an error).
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True) -> None:
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / DB_FILE
        if not path.is_file() and not create:
            raise ResultsStoreError(
                f"No results table at {path}. Run 'medunlearn experiment CONFIG --out "
                f"{path.parent}' first, or point to the folder that holds {DB_FILE}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self._con = sqlite3.connect(path, timeout=60, isolation_level=None)
            self._con.row_factory = sqlite3.Row
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.executescript(_schema())
        except sqlite3.DatabaseError as exc:
            raise ResultsStoreError(f"{path} is not a readable results database: {exc}") from None

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    # -- writing -------------------------------------------------------------------------------
    def insert(self, row: dict) -> bool:
        """Insert one finished cell in one transaction; ``False`` if its key is already there.

        Also clears any failure recorded earlier for the same key.
        """
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise ValueError(f"unknown result columns: {unknown}")
        values = {k: _sql_value(row.get(k)) for k in COLUMNS}
        names = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        with self._transaction() as con:
            cur = con.execute(f"INSERT OR IGNORE INTO results ({names}) VALUES ({marks})",
                              [values[k] for k in COLUMNS])
            con.execute("DELETE FROM failures WHERE key = ?", (row["key"],))
            return cur.rowcount == 1

    def record_failure(self, key: str, slug: str, error: str, log: str, created: str) -> None:
        """Remember that a cell failed (it is retried on the next run)."""
        with self._transaction() as con:
            con.execute(
                "INSERT INTO failures (key, slug, error, log, attempts, created) "
                "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(key) DO UPDATE SET error = excluded.error, "
                "log = excluded.log, attempts = failures.attempts + 1, created = excluded.created",
                (key, slug, error, log, created))

    # -- reading -------------------------------------------------------------------------------
    def keys(self) -> set[str]:
        return {r[0] for r in self._con.execute("SELECT key FROM results")}

    def count(self) -> int:
        return int(self._con.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def rows(self) -> list[dict]:
        """Every row, with ``metrics``/``config``/``options`` decoded from JSON."""
        out = []
        for r in self._con.execute("SELECT * FROM results ORDER BY experiment, dataset, view, "
                                   "augment, forget_ratio, forget, label, seed"):
            d = dict(r)
            for k in ("metrics", "config", "options"):
                d[k] = json.loads(d[k]) if d.get(k) else {}
            d["gate_reasons"] = json.loads(d["gate_reasons"]) if d.get("gate_reasons") else []
            d["gate_passed"] = None if d["gate_passed"] is None else bool(d["gate_passed"])
            out.append(d)
        return out

    def failures(self) -> list[dict]:
        return [dict(r) for r in self._con.execute("SELECT * FROM failures ORDER BY key")]

    def export_csv(self, path: str | os.PathLike | None = None) -> Path:
        """Write every row to CSV (atomically): key columns, headline metrics, the verdict, then
        every flattened metric as its own ``m.<name>`` column."""
        path = Path(path) if path else self.path.parent / CSV_FILE
        rows = self.rows()
        extra = sorted({k for r in rows for k in r["metrics"]})
        base = [c for c in COLUMNS if c not in ("metrics", "config")]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(base + [f"m.{k}" for k in extra])
        for r in rows:
            vals = [r.get(c) for c in base]
            vals = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in vals]
            w.writerow(vals + [r["metrics"].get(k) for k in extra])
        return atomic_write_text(path, buf.getvalue())


def _sql_value(v):
    v = to_jsonable(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, bool):
        return int(v)
    return v


def flatten(obj, prefix: str = "") -> dict:
    """Flatten a nested metrics dict into ``{"a.b.c": scalar}`` (lists get index components).

    >>> flatten({"test": {"fnr": 0.1, "recall": [0.9, 0.8]}})
    {'test.fnr': 0.1, 'test.recall.0': 0.9, 'test.recall.1': 0.8}
    """
    obj = to_jsonable(obj)
    out: dict = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    elif prefix:
        out[prefix[:-1]] = obj
    return out

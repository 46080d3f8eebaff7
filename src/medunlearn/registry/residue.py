"""What a forgotten image leaves behind in the registry, and the purge that deletes it.

Once a request makes a new version, every *superseded* version that was trained on, or derived
from, an image forgotten since is residue: its weights still encode the images. The registry
deletes (purges) the weights of those versions by default and keeps each version's record (its
ledger entries, ``config.json``, ``metrics.json`` and index files). ``--keep-superseded N`` keeps
the weights of the last N superseded versions for rollback; the request's result and its
``purge`` ledger entry say what was purged, what is kept and until which promotion, and what the
registry cannot reach (:data:`NOT_REACHABLE`).

A ``purge`` ledger entry lists each purged file with the SHA-256 its version recorded, and is
committed with the promotion *before* the files are deleted; a crash in between leaves files
whose purge is recorded, which the next writer deletes (:func:`apply_purges`). The audit replays
these entries (:func:`unpurged`): a purged file that is absent is *purged by design*; a file that
is absent and not purged is *missing*; a file at a purged path with other bytes was planted.

:func:`scan` lists every file still in the registry that is derived from a forgotten image
(``medunlearn registry residue REG``).

This module imports only the ledger and the store (the replay and the audit call it).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path

from medunlearn.config import EXACT_METHODS
from medunlearn.fileio import _fsync_dir, sha256_file
from medunlearn.registry import ledger, shadow_records, store

PURGE_KIND = "purge"
#: The ledger entry that vouches for the active version's feature table in ``REG/cache``.
FEATURES_KIND = "features"

#: What a purge cannot reach: said in every request's result and its certificate.
NOT_REACHABLE = ["copies of any model version deployed or copied outside the registry",
                 "backups or snapshots of the registry folder",
                 "the training data itself (the image files and their copies)"]

#: Files of a version folder that hold (or are) a model: purged. Everything else in the folder
#: (config.json, metrics.json, index CSVs, history, plots) is the version's record and is kept.
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin", ".onnx", ".npz", ".npy")

#: The registry's own files and folders at its top level (anything else is not the registry's).
KNOWN_TOP = {"registry.db", "registry.db-wal", "registry.db-shm", "registry.db-journal",
             store.HEAD_FILE, store.INTENT_FILE, "lock", "versions", "staging", "cache",
             "forgetting_quality", shadow_records.DIR}
#: Files of a per-image check's folder that are its record (vouched for by the ledger), kept.
PROOF_RECORDS = {"forgetting_quality.json", "forgetting_quality.json.next", "lock"}


def is_weights(name: str) -> bool:
    """Whether a version file (relative path) is a model file that a purge deletes."""
    return name.lower().endswith(WEIGHT_SUFFIXES)


# --------------------------------------------------------------------------- the ledger's view


def purged_files(entries: list[dict]) -> dict[int, dict[str, str]]:
    """``{version: {file: sha256}}`` of every file a ``purge`` entry recorded as purged."""
    out: dict[int, dict[str, str]] = {}
    for e in entries:
        if e["kind"] == PURGE_KIND and isinstance(e["body"], dict):
            for p in e["body"].get("purged") or []:
                if isinstance(p, dict):
                    out.setdefault(p.get("version"), {})[str(p.get("file"))] = p.get("sha256")
    return out


def unpurged(reg: Path, expected: dict, entries: list[dict]) -> dict:
    """``expected`` (the replayed tables) with each version's recorded files minus those purged
    by design and absent: what the version folders must still hold. A purged file still present
    with its recorded bytes (a purge interrupted by a crash) stays expected, so it passes; one
    present with other bytes is reported by the file check as added (planted)."""
    purged = purged_files(entries)
    files = {}
    for n, recorded in expected["files"].items():
        gone = purged.get(n, {})
        if isinstance(recorded, dict) and gone:
            folder = Path(reg) / "versions" / str(n)
            recorded = {name: h for name, h in recorded.items()
                        if name not in gone or _matches(folder / name, h)}
        files[n] = recorded
    return {**expected, "files": files}


def purge_problems(entries: list[dict]) -> list[str]:
    """``purge`` entries that purge a file their version never recorded, or with another hash."""
    recorded: dict[int, dict] = {}
    problems = []
    for e in entries:
        body = e["body"] if isinstance(e["body"], dict) else {}
        if e["kind"] in ("init", "promote"):
            recorded[body.get("version")] = body.get("files") or {}
        elif e["kind"] == PURGE_KIND:
            for p in body.get("purged") or []:
                n, name = (p.get("version"), p.get("file")) if isinstance(p, dict) else (None, p)
                if recorded.get(n, {}).get(name) != (p.get("sha256") if isinstance(p, dict)
                                                     else None):
                    problems.append(f"ledger entry {e['seq']} (purge) names {name!r} of model "
                                    f"version {n}, which that version's entry does not record "
                                    "with this hash (the purge entry is not genuine)")
    return problems


def purge_notes(reg: Path, entries: list[dict]) -> list[str]:
    """Warnings for ``audit verify``: files purged by design that are still on disk with their
    recorded bytes (a purge interrupted by a crash; the next writer deletes them)."""
    return [f"{Path(reg) / 'versions' / str(n) / name} was purged by design but is still on "
            "disk (an interrupted purge); the next 'forget' or 'registry resume' deletes it"
            for n, files in sorted(purged_files(entries).items(), key=lambda kv: str(kv[0]))
            for name, h in sorted(files.items())
            if _matches(Path(reg) / "versions" / str(n) / name, h)]


def audit_notes(reg: Path, entries: list[dict]) -> list[str]:
    """Warnings for ``audit verify``: interrupted purges (:func:`purge_notes`), and entries of
    ``REG/versions`` that are no recorded version (the registry did not make them and never
    deletes them; move them out of the registry)."""
    known = {str(n) for n in recorded_files(entries)}
    versions = Path(reg) / "versions"
    unknown = [p for p in sorted(versions.iterdir()) if p.name not in known] \
        if versions.is_dir() and not versions.is_symlink() else []
    return purge_notes(reg, entries) + [
        f"{p} is not a model version the ledger records (the registry did not make it and will "
        "not delete it); move it out of the registry folder" for p in unknown
    ] + shadow_records.audit_notes(reg, entries)


def purged_count(entries: list[dict]) -> int:
    """How many version and shadow-model files were purged by design."""
    return sum(len(f) for f in purged_files(entries).values()) + len(
        shadow_records.purged_files(entries))


def _matches(path: Path, sha256: str | None) -> bool:
    return _plain_file(path) and sha256_file(path) == sha256


def _plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


# --------------------------------------------------------------------------- what to purge


def derived_versions(conn: sqlite3.Connection) -> set[int]:
    """Versions whose weights contain (were trained on, or unlearned from a model trained on) an
    image that the registry has forgotten since.

    Versions form one chain (each one's parent is the version active when it was made). An image
    forgotten in version ``f`` is in version ``n < f``; it is also in ``n >= f`` unless an exact
    retraining at or after ``f`` (and up to ``n``) left it out, because approximate unlearning
    derives the new weights from weights that held it. Version 1 counts as exact unless the
    registered model had itself forgotten images by unlearning.
    """
    rows = {r["n"]: r for r in conn.execute("SELECT n, parent, method FROM versions")}
    pre = conn.execute("SELECT COUNT(*) FROM samples WHERE forgotten_in = 1 AND request_id IS "
                       "NOT NULL AND request_id NOT IN (SELECT id FROM requests)").fetchone()[0]
    exact = {n for n, r in rows.items() if r["method"] in EXACT_METHODS or (n == 1 and not pre)}
    forgotten = sorted({r[0] for r in conn.execute(
        "SELECT DISTINCT forgotten_in FROM samples WHERE forgotten_in IS NOT NULL")})
    out = set()
    for n in rows:
        last_exact = max((e for e in exact if e <= n), default=None)
        if any(f > n or last_exact is None or last_exact < f for f in forgotten):
            out.add(n)
    return out


def recorded_files(entries: list[dict]) -> dict[int, dict[str, str]]:
    """``{version: {file: sha256}}`` as each version's ``init``/``promote`` entry recorded."""
    return {e["body"].get("version"): e["body"].get("files") or {} for e in entries
            if e["kind"] in ("init", "promote") and isinstance(e["body"], dict)}


def plan(conn: sqlite3.Connection, new_active: int, keep: int) -> dict:
    """What the promotion of ``new_active`` purges and keeps (``keep``: the last N superseded
    versions keep their weights).

    Returns:
        The body of the ``purge`` ledger entry (also the request result's ``residue``):
        ``purged`` ``[{version, file, sha256}]`` (this promotion's), ``kept``
        ``[{version, files, kept_until_version}]`` (weights kept until that version is
        promoted), ``keep_superseded``, ``not_reachable``.
    """
    derived = derived_versions(conn)
    entries = ledger.entries(conn)
    recorded = recorded_files(entries)
    already = purged_files(entries)
    purged, kept = [], []
    for n in sorted(k for k in recorded if isinstance(k, int) and k < new_active):
        if n not in derived:
            continue
        weights = {f: h for f, h in (recorded[n] or {}).items()
                   if is_weights(f) and f not in already.get(n, {})}
        if not weights:
            continue
        if n >= new_active - keep:
            kept.append({"version": n, "files": sorted(weights),
                         "kept_until_version": n + keep + 1})
        else:
            purged += [{"version": n, "file": f, "sha256": h} for f, h in sorted(weights.items())]
    return {"version": new_active, "keep_superseded": keep, "purged": purged, "kept": kept,
            "not_reachable": list(NOT_REACHABLE)}


def apply_purges(reg: Path, entries: list[dict]) -> list[str]:
    """Delete every file a ``purge`` entry (or a ``shadows`` entry: superseded shadow models)
    recorded that is still on disk with its recorded bytes (never anything else: a file with
    other bytes is left for the audit to report).

    Returns:
        The paths deleted.
    """
    removed = shadow_records.apply_purges(reg, entries)
    for n, files in purged_files(entries).items():
        folder = Path(reg) / "versions" / str(n)
        for name, h in files.items():
            path = folder / name
            if _matches(path, h):
                path.unlink()
                removed.append(str(path))
        if files and folder.is_dir():
            _fsync_dir(folder)
    return removed


def clean_scratch(reg: Path) -> list[str]:
    """Delete what requests and per-image checks leave behind that a forgotten image can be in:
    everything under ``REG/staging`` and the work runs of each check under
    ``REG/forgetting_quality/<request>/`` (its record files are kept; a check that is running,
    i.e. holds its lock, is skipped). Only plain files and folders are deleted (symlinks are
    refused before: :func:`medunlearn.registry.store.check_plain`)."""
    import fcntl

    removed = []
    staging = Path(reg) / "staging"
    for child in sorted(staging.iterdir()) if staging.is_dir() else []:
        _remove(child)
        removed.append(str(child))
    fq = Path(reg) / "forgetting_quality"
    for work in sorted(fq.iterdir()) if fq.is_dir() else []:
        if not work.is_dir() or work.is_symlink():
            continue
        lock = work / "lock"
        fh = open(lock, "a+") if lock.is_file() else None  # noqa: SIM115 (held below)
        try:
            if fh is not None:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # the check is running: its runs are cleaned next time
            for child in sorted(work.iterdir()):
                if child.name not in PROOF_RECORDS:
                    _remove(child)
                    removed.append(str(child))
        finally:
            if fh is not None:
                fh.close()
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- listing


def residue(reg: str | os.PathLike) -> list[dict]:
    """:func:`scan` of a registry folder (``medunlearn registry residue``; reads only, under
    the shared lock so that a running request is not seen half-way)."""
    from medunlearn.registry.db import connect, writer_lock

    connect(reg).close()  # a clear error if reg is not a registry
    with writer_lock(reg, shared=True):
        conn = connect(reg)
        try:
            return scan(Path(reg), conn)
        finally:
            conn.close()


def scan(reg: Path, conn: sqlite3.Connection) -> list[dict]:
    """Every file in the registry derived from a forgotten image: ``[{path, what, kept_until}]``
    (``kept_until``: the version whose promotion purges a copy kept for rollback, else None).

    Checked: the weights of superseded versions that hold a forgotten image; staging folders;
    the work runs of per-image checks; shadow models trained on a forgotten image, superseded
    or not recorded (:func:`.shadow_records.scan`); feature tables in ``REG/cache`` other than
    the one the ledger vouches for (a vouched table holds no withdrawn image: they are left out
    when it is written); and any other model file anywhere in the registry outside the active
    version.
    """
    reg = Path(reg)
    entries = ledger.entries(conn)
    active = int((conn.execute("SELECT value FROM meta WHERE key = 'active_version'").fetchone()
                  or ["1"])[0])
    derived = derived_versions(conn)
    kept_until = {}
    for e in entries:
        if e["kind"] == PURGE_KIND and isinstance(e["body"], dict):
            for k in e["body"].get("kept") or []:
                kept_until[k.get("version")] = k.get("kept_until_version")
    out: list[dict] = []
    seen: set[Path] = set()
    versions = reg / "versions"
    for folder in sorted(versions.iterdir(), key=lambda p: p.name) if versions.is_dir() else []:
        n = int(folder.name) if folder.name.isdigit() else None
        if n == active:
            seen.update(folder.rglob("*"))
            continue
        for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if p.is_file() and is_weights(p.name):
                seen.add(p)
                if n in derived or n is None:
                    what = (f"weights of superseded version {n}, which holds forgotten images"
                            if n is not None else "a model file not made by the registry")
                    out.append({"path": str(p), "what": what, "kept_until": kept_until.get(n)})
    staging = reg / "staging"
    for p in sorted(staging.rglob("*")) if staging.is_dir() else []:
        seen.add(p)
        if p.is_file():
            out.append({"path": str(p), "what": "a candidate being built (staging)",
                        "kept_until": None})
    fq = reg / "forgetting_quality"
    for work in sorted(fq.iterdir()) if fq.is_dir() else []:
        for p in sorted(work.rglob("*")) if work.is_dir() else []:
            seen.add(p)
            if p.is_file() and p.relative_to(work).parts[0] not in PROOF_RECORDS:
                out.append({"path": str(p), "what": "a work run of a per-image check",
                            "kept_until": None})
    forgotten = {r[0] for r in conn.execute(
        "SELECT idx FROM samples WHERE forgotten_in IS NOT NULL")}
    for row in shadow_records.scan(reg, entries, forgotten):
        seen.add(Path(row["path"]))
        out.append(row)
    shadows = reg / shadow_records.DIR
    seen.update(shadows.rglob("*") if shadows.is_dir() else [])
    vouched = vouched_tables(entries, active)
    withdrawn = conn.execute("SELECT COUNT(*) FROM samples WHERE request_id IS NOT NULL"
                             ).fetchone()[0]
    if (latest_features(entries) or {}).get("withdrawn") != withdrawn:
        vouched = {}  # written before images were withdrawn: it may hold some of them
    cache = reg / "cache"
    for p in sorted(cache.rglob("*")) if cache.is_dir() else []:
        seen.add(p)
        if p.is_file() and not (p.name in vouched and _matches(p, vouched[p.name])):
            out.append({"path": str(p), "what": "a feature table not vouched for by the ledger "
                        "as free of withdrawn images", "kept_until": None})
    for p in sorted(reg.rglob("*")):
        if p not in seen and p.is_file() and is_weights(p.name) and not any(
                q in seen for q in p.parents):
            out.append({"path": str(p), "what": "a model file not made by the registry",
                        "kept_until": None})
    return out


def vouched_tables(entries: list[dict], active: int) -> dict[str, str]:
    """``{file name: sha256}`` of the feature tables in ``REG/cache`` that the ledger vouches
    for: those of the latest ``features`` entry, when it is for the ``active`` version."""
    last = latest_features(entries)
    if last is None or last.get("version") != active:
        return {}
    return {t["file"]: t["sha256"] for t in last.get("tables") or []
            if isinstance(t, dict) and "file" in t and "sha256" in t}


def latest_features(entries: list[dict]) -> dict | None:
    """The body of the latest ``features`` ledger entry (None: there is none)."""
    bodies = [e["body"] for e in entries
              if e["kind"] == FEATURES_KIND and isinstance(e["body"], dict)]
    return bodies[-1] if bodies else None

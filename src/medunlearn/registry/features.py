"""The active model's feature cache (``REG/cache``), vouched for by the ledger.

Derived data (``medunlearn.cache``): the active version's penultimate features on the
verification images, so that a request runs only the candidate model over them (and not even
that when the candidate's unlearning changed only the head). Deleting the folder only costs time.

A cached feature decides a verification's verdict, so it is used only when the ledger vouches
for it: whenever the registry writes a table it appends a ``features`` ledger entry with the
table's SHA-256 (:func:`record_features`), and a request's session reads only the tables of the
latest entry, for the active version, with those exact bytes (:func:`open_session`). A table
that was edited, replaced, damaged or is not the active version's is ignored and recomputed. Each
attempt records whether cached features were used and the hash of their table
(:func:`usage`).

A table never holds the features of a withdrawn image: :func:`keep_active_features` writes the
active version's table without them (they are residue of a forgotten patient).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np

from medunlearn import cache
from medunlearn.errors import CheckpointError, DataError
from medunlearn.registry import ledger, residue, store

#: The cache folder inside a registry.
CACHE_DIR = "cache"


def open_session(reg: Path, conn: sqlite3.Connection, active: int) -> cache.Session:
    """A cache session over ``REG/cache`` that trusts only the tables the ledger vouches for
    (the latest ``features`` entry, when it is for the ``active`` version)."""
    return cache.Session(Path(reg) / CACHE_DIR,
                         trusted=residue.vouched_tables(ledger.entries(conn), active))


def usage(session: cache.Session, before: dict) -> dict:
    """What an attempt took from the cache, for its record: ``cached`` (features read from a
    vouched table were used), ``tables`` (file -> SHA-256 of the tables read), hits and misses
    during the attempt, and ``rejected`` tables with the reason. ``before`` is
    :func:`counters` taken when the attempt started."""
    now = counters(session)
    disk = now["disk_hits"] - before["disk_hits"]
    return {"cached": disk > 0, "tables": dict(session.loaded), "disk_hits": disk,
            "hits": now["hits"] - before["hits"], "misses": now["misses"] - before["misses"],
            "rejected": dict(session.rejected)}


def counters(session: cache.Session) -> dict:
    return {"hits": session.hits, "misses": session.misses, "disk_hits": session.disk_hits}


def keep_active_features(active_dir: Path, session: cache.Session, *, withdrawn: list[int],
                         data_root: str | None = None) -> list[dict] | None:
    """Write the tables of the model in ``active_dir`` (computed or read in ``session``) to the
    session's folder without the rows of the ``withdrawn`` training images, and delete every
    other table there (earlier versions, rejected candidates, damaged files).

    Returns:
        ``[{file, sha256, rows}]`` of the tables written (for :func:`record_features`), or
        None when the model's data could not be loaded here (then every table is deleted: an
        unfiltered table could hold a withdrawn image's features).
    """
    from medunlearn.checkpoint import load_run
    from medunlearn.loop import model_parts

    folder = session.directory
    if folder is None:
        return []
    try:
        run = load_run(active_dir)
        _, head = model_parts(run.model)
        digest = cache.backbone_digest(run.model, head)
        keys = {k for k in session.features if k.startswith(digest + "-")}
        if folder.is_dir():
            keys |= {p.stem for p in folder.glob(f"{digest}-*.npz")}
        if not keys:
            cache.prune(folder, keep=set())
            return []
        overrides = {"data_root": data_root} if data_root else {}
        dataset = run.load_dataset(cache=session, **overrides)
    except (DataError, CheckpointError, OSError):
        cache.prune(folder, keep=set())
        return None
    width = getattr(head, "in_features", None)
    hashes = dataset.train.pixel_hashes
    drop = {hashes[i] for i in withdrawn if 0 <= i < len(hashes)}
    written = []
    for key in sorted(keys):
        session.table(key, width)  # a trusted table on disk is read (and filtered) too
        saved = cache.save_features(session, key, drop=drop)
        if saved is not None:
            path, sha, rows = saved
            written.append({"file": path.name, "sha256": sha, "rows": rows})
    cache.prune(folder, keep={t["file"] for t in written})
    return written


def record_features(reg: Path, conn: sqlite3.Connection, version: int,
                    tables: list[dict] | None) -> None:
    """Vouch for the tables just written (one ``features`` ledger entry), unless the latest
    entry says the same already."""
    withdrawn = conn.execute("SELECT COUNT(*) FROM samples WHERE request_id IS NOT NULL"
                             ).fetchone()[0]
    body = {"version": version, "tables": tables or [], "withdrawn": withdrawn}
    last = residue.latest_features(ledger.entries(conn))
    if last == body or (last is None and not body["tables"]):
        return
    with store.write(reg, conn):
        ledger.append(conn, residue.FEATURES_KIND, body)


def warm_features(model_dir: str | os.PathLike, session: cache.Session, *, retain: list[int],
                  data_root: str | None = None) -> int:
    """Compute the features of the model in ``model_dir`` on the images every verification uses
    (validation, test and the seeded subset of the ``retain`` training indices; see
    ``steps.VERIFY_OPTIONS``) into ``session``. Returns the number of images run."""
    from medunlearn.checkpoint import load_run_and_data
    from medunlearn.evaluation.record import EvalOptions, retain_subset
    from medunlearn.loop import Runtime, infer
    from medunlearn.registry.steps import VERIFY_OPTIONS

    run, dataset = load_run_and_data(model_dir, data_root=data_root, cache=session)
    opts = EvalOptions(**VERIFY_OPTIONS)
    rt = Runtime.create(opts.device, "fp32", opts.threads)
    pool = retain_subset(np.asarray(retain, dtype=np.int64), opts.retain_limit,
                         seed=opts.seed, n_train=len(dataset.train))
    before = session.misses
    for split, idx in ((dataset.train, pool), (dataset.val, None), (dataset.test, None)):
        infer(run.model, split, idx, runtime=rt, batch_size=opts.batch_size, features=True,
              cache=session)
    return session.misses - before

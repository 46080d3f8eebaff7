"""Model versions and the training manifest: registering a model, and reading the registry.

:func:`init_registry` copies a trained run folder as version 1 and records its manifest of image
hashes (one ledger entry); :mod:`.reading` reads the registry (status, manifest). The
reading helpers below (active version, withdrawn and forgotten images, approximate steps) are
shared by the request workflow (:mod:`.requests`, :mod:`.workflow`) and the per-image proof
(:mod:`.forgetting_proof`).

A registry folder ``REG`` holds::

    REG/registry.db        SQLite: manifest, versions, requests, attempts, audit ledger
    REG/LEDGER_HEAD        sequence number and hash of the last ledger entry (see .store)
    REG/lock               writer lock (fcntl.flock), held for a whole request
    REG/versions/<n>/      model version n, a complete run folder (v1 = the registered model)
    REG/staging/           candidate models being built (orphans are removed on the next run)
    REG/cache/             derived: the active version's features (see .features)
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from medunlearn.config import EXACT_METHODS
from medunlearn.errors import CheckpointError, DataError, MedUnlearnError
from medunlearn.fileio import read_index_rows, read_json, sha256_file, staged_output
from medunlearn.registry import features, ledger, store
from medunlearn.registry.db import LOCK_FILE, SCHEMA_VERSION, connect, get_meta, set_meta
from medunlearn.registry.deletion_request import HASH_PATTERN
from medunlearn.registry.errors import RegistryError
from medunlearn.registry.replay import BEFORE, manifest_sha256
from medunlearn.registry.store import select_in

#: The weights file of a version folder (a run folder): ``checkpoint.MODEL_FILE``, named here so
#: that reading a registry (status, audit) does not import torch.
MODEL_FILE = "model.safetensors"


#: Recommended method chains: the first method that passes the safety gate is promoted.
#: A deletion request usually names one patient's few images, so the chain starts with the
#: Newton-step weight scrub (seconds, a bounded update; the TB-detection study's method), falls
#: back to SalUn-CRA on binary clinical views (it never teaches "malignant looks benign") or
#: SalUn on multi-class views, and finally to exact retraining without every forgotten image.
RECOMMENDED = {"binary": ["newton", "salun-cra", "retrain"],
               "native": ["newton", "salun", "retrain"]}


# --------------------------------------------------------------------------- init


def read_manifest(path: Path) -> list[tuple[int, str, int]]:
    """Rows ``(index, sha256, label)`` of a ``manifest.csv``, checked to be complete.

    Raises:
        RegistryError: malformed file, bad hash, or indices that are not 0..N-1.
    """
    try:
        header, table = read_index_rows(path)
        if not {"index", "sha256", "label"} <= set(header):
            raise RegistryError(f"{path} must have the columns index,sha256,label.")
        rows = [(int(r["index"]), r["sha256"].strip().lower(), int(r["label"])) for r in table]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryError(
            f"{path} is not a valid training manifest ({_short_exc(exc)}). Restore it from the "
            "training run, or delete it to recompute it from the data.") from exc
    if [r[0] for r in rows] != list(range(len(rows))):
        raise RegistryError(f"{path} does not list training indices 0..{len(rows) - 1} in "
                            "order; restore it from the training run.")
    bad = [r[0] for r in rows if not HASH_PATTERN.fullmatch(r[1])]
    if bad:
        raise RegistryError(f"{path}: rows {bad[:5]} do not hold SHA-256 hashes (64 hex "
                            "digits); restore the file from the training run.")
    return rows


def _short_exc(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_registrable(model_dir: Path, config: dict) -> None:
    """Refuse a run folder whose config.json does not say which data it was trained on: every
    later request reloads that data (it would fail after withdrawing the images)."""
    from medunlearn.data.sources import validate_record

    try:
        validate_record(config.get("data"))
    except (MedUnlearnError, ValueError, TypeError) as exc:
        raise RegistryError(
            f"{model_dir / 'config.json'} cannot be registered: {_short_exc(exc)}. Every "
            "deletion request retrains or unlearns on the model's data, so register the "
            "unchanged --out folder of 'medunlearn train'.") from None


def recommended_methods(config: dict) -> list[str]:
    """The method chain recommended for a model's task view (see :data:`RECOMMENDED`)."""
    kind = (config.get("dataset", {}).get("view", {}) or {}).get("kind") or \
        config.get("data", {}).get("view")
    if config.get("shards"):  # a sharded model: exact one-shard retraining first (sisa)
        return ["sisa", "retrain"]
    return list(RECOMMENDED["binary" if kind == "binary" else "native"])


def _forgotten_before(model_dir: Path, config: dict) -> list[int]:
    """Images an ``unlearn`` run folder has forgotten already (they stay forgotten)."""
    if config.get("kind") != "unlearn":
        return []
    if (config.get("forget") or {}).get("excluded_count"):
        raise RegistryError(
            f"{model_dir} is a chained unlearning run whose earlier exclusions are not listed "
            "in its folder, so the registry could not keep those images out of later retraining."
            " Register the original training run instead and submit the earlier deletions as "
            "requests.")
    path = model_dir / "forget.csv"
    if not path.is_file():
        raise RegistryError(f"{model_dir} is an unlearning run without forget.csv; restore it, or "
                            "register the original training run instead.")
    try:
        return sorted({int(r["index"]) for r in read_index_rows(path)[1]})
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{path} is not a valid forget list ({_short_exc(exc)}); restore it "
                            "from the unlearning run.") from exc


def init_registry(model_dir: str | os.PathLike, out: str | os.PathLike, *,
                  methods: list[str] | None = None, data_root: str | None = None,
                  overwrite: bool = False, warm: bool = True, keep_superseded: int = 0,
                  shadows: int | None = None, shadow_seed: int | None = None,
                  progress: bool = False) -> dict:
    """Register a deployed model: copy its run folder as version 1 and record its manifest.

    Args:
        model_dir: A run folder (``medunlearn train`` output; ``manifest.csv`` is used when
            present, otherwise the hashes are computed from the data).
        out: The registry folder to create (must be new or empty unless ``overwrite``).
        methods: The method chain (first = default method, the rest = fallbacks); default: the
            recommendation for the model's task view, e.g. ``["newton", "salun-cra", "retrain"]``.
        data_root: Where the MedMNIST files are (recorded and used by later requests).
        overwrite: Replace an existing registry at ``out``.
        warm: Also compute the model's features on the verification images into ``OUT/cache``
            (:func:`.features.warm_features`), so the first request is as fast as the later
            ones. Skipped when the data cannot be loaded here (the first request then computes
            them).
        keep_superseded: After each request, keep the weights of the last N superseded
            versions for rollback (0, the default: purge every superseded version that holds a
            forgotten image; see :mod:`.residue`). Recorded in the ``init`` entry.
        shadows: Also train K shadow models of the model (at least 4; 16 to 32 recommended)
            for the gate's per-image membership check (:func:`.shadows.train`). Resumable:
            calling ``init_registry`` again with the same model and ``out`` finishes an
            interrupted training (finished shadows are reused) instead of refusing the
            existing registry.
        shadow_seed: Base seed of the shadows (default: the model's seed).
        progress: Show the shadows' training progress.

    Returns:
        The registry folder (:func:`.reading.status` reads it).

    Raises:
        CheckpointError: the model folder is incomplete or its weights are unreadable.
        RegistryError: invalid manifest or method chain.
    """
    from medunlearn.checkpoint import load_run  # safetensors only: no pickle is ever loaded
    from medunlearn.data.sources import dataset_name

    model_dir = Path(model_dir)
    if shadows is not None:
        from medunlearn.registry import shadows as shadow_models

        shadow_models.check_k(shadows)  # before anything is written
        if not overwrite and _registered_from(out, model_dir):
            shadow_models.train(out, k=shadows, seed=shadow_seed, data_root=data_root,
                                progress=progress)
            return Path(out)
    run = load_run(model_dir)
    config = run.config
    _check_registrable(model_dir, config)
    if isinstance(keep_superseded, bool) or not isinstance(keep_superseded, int) or not (
            0 <= keep_superseded <= 1000):
        raise RegistryError(f"--keep-superseded must be a whole number from 0 to 1000, not "
                            f"{keep_superseded!r} (0 purges every superseded version's weights).")
    chain = list(methods) if methods else recommended_methods(config)
    if not chain or any(not isinstance(m, str) or not m for m in chain) or len(set(chain)) != len(
            chain):
        raise RegistryError(f"The method chain {chain!r} must list distinct method names, e.g. "
                            "salun-cra,retrain.")
    pre_forgotten = _forgotten_before(model_dir, config)
    from medunlearn.errors import ConfigError
    from medunlearn.methods import get_method_class

    for m in chain:
        try:
            get_method_class(m)
        except ConfigError as exc:
            raise RegistryError(f"The method chain {','.join(chain)} is invalid: {exc}") from None
    if (model_dir / "manifest.csv").is_file():
        rows = read_manifest(model_dir / "manifest.csv")
        manifest_source = "manifest.csv"
    else:
        dataset = run.load_dataset(**({"data_root": data_root} if data_root else {}))
        rows = [(i, h, int(y)) for i, (h, y) in
                enumerate(zip(dataset.train.hashes, dataset.train.labels.tolist(), strict=True))]
        manifest_source = "computed from the training data"
    with staged_output(out, overwrite=overwrite, what="registry") as stage:
        v1 = stage / "versions" / "1"
        shutil.copytree(model_dir, v1, ignore=shutil.ignore_patterns(".*"))
        (stage / "staging").mkdir()
        (stage / LOCK_FILE).touch()
        weights = sha256_file(v1 / MODEL_FILE)
        conn = connect(stage, create=True)
        try:
            with store.write(stage, conn):
                meta = {"schema_version": SCHEMA_VERSION, "created": ledger.now_iso(),
                        "source_model": str(model_dir.resolve()), "methods": json.dumps(chain),
                        "seed": str(run.seed), "data_root": data_root or "",
                        "dataset": dataset_name(config.get("data") or {}),
                        "manifest_sha256": manifest_sha256(rows),
                        "keep_superseded": str(keep_superseded)}
                for k, v in {**meta, "active_version": "1"}.items():
                    set_meta(conn, k, v)
                conn.executemany("INSERT INTO samples(idx, sha256, label) VALUES(?, ?, ?)", rows)
                if any(i >= len(rows) for i in pre_forgotten):
                    raise RegistryError(f"{model_dir / 'forget.csv'} lists indices beyond the "
                                        f"{len(rows)} training images; the folder is damaged.")
                select_in(conn, "UPDATE samples SET request_id = ?, forgotten_in = 1 WHERE idx "
                          "IN ({in})", pre_forgotten, [BEFORE])
                conn.execute("INSERT INTO versions(n, path, weights_sha256, parent, request_id, "
                             "method, created) VALUES(1, 'versions/1', ?, NULL, NULL, NULL, ?)",
                             (weights, meta["created"]))
                ledger.append(conn, "init", {
                    "version": 1, "weights_sha256": weights,
                    "config_sha256": sha256_file(v1 / "config.json"),
                    "fingerprint": config.get("fingerprint"), "kind": config.get("kind"),
                    "data": config.get("data"), "train": config.get("train"),
                    "model": config.get("model"), "seed": run.seed,
                    "manifest": {"count": len(rows), "sha256": meta["manifest_sha256"],
                                 "source": manifest_source},
                    "methods": chain, "source_model": meta["source_model"],
                    "forgotten_before": pre_forgotten, "meta": meta,
                    "files": store.folder_hashes(v1),
                }, created=meta["created"])
        finally:
            conn.close()
    if warm:
        _warm(Path(out), rows, pre_forgotten, data_root)
    if shadows is not None:
        from medunlearn.registry import shadows as shadow_models

        shadow_models.train(out, k=shadows, seed=shadow_seed, data_root=data_root,
                            progress=progress)
    return Path(out)


def _registered_from(out: str | os.PathLike, model_dir: Path) -> bool:
    """Whether ``out`` is a registry whose version 1 is the model in ``model_dir`` (same
    weights): ``init --shadows`` run again then resumes the shadows' training."""
    from medunlearn.registry.db import DB_FILE

    if not (Path(out) / DB_FILE).is_file() or not (model_dir / MODEL_FILE).is_file():
        return False
    conn = connect(out)
    try:
        row = conn.execute("SELECT weights_sha256 FROM versions WHERE n = 1").fetchone()
    finally:
        conn.close()
    return row is not None and row[0] == sha256_file(model_dir / MODEL_FILE)


def _warm(reg: Path, rows: list, pre_forgotten: list[int], data_root: str | None) -> None:
    """Compute version 1's features into ``REG/cache`` and vouch for them in the ledger (an
    optimisation only: when the data cannot be loaded, the first request computes them)."""
    from medunlearn.cache import Session

    session = Session(reg / features.CACHE_DIR)
    v1 = reg / "versions" / "1"
    try:
        gone = set(pre_forgotten)
        features.warm_features(v1, session, retain=[r[0] for r in rows if r[0] not in gone],
                               data_root=data_root)
        tables = features.keep_active_features(v1, session, withdrawn=pre_forgotten,
                                               data_root=data_root)
    except (DataError, CheckpointError):
        return
    from medunlearn.registry.db import writer_lock

    with writer_lock(reg):
        conn = connect(reg)
        try:
            features.record_features(reg, conn, 1, tables)
        finally:
            conn.close()


# --------------------------------------------------------------------------- reading


def version_row(conn: sqlite3.Connection, n: int) -> sqlite3.Row:
    """The ``versions`` row of model version ``n`` (its folder is ``REG / row["path"]``)."""
    row = conn.execute("SELECT * FROM versions WHERE n = ?", (n,)).fetchone()
    if row is None:
        raise RegistryError(f"The registry's active version {n} has no record; run "
                            "'medunlearn audit verify' and restore the registry from a backup.")
    return row


def active_version(conn: sqlite3.Connection) -> int:
    """The number of the model version in service."""
    return int(get_meta(conn, "active_version", "1"))


def withdrawn_indices(conn: sqlite3.Connection) -> list[int]:
    """Every training index ever withdrawn by a request (pending, completed or failed)."""
    return [r[0] for r in conn.execute(
        "SELECT idx FROM samples WHERE request_id IS NOT NULL ORDER BY idx")]


def not_forgotten(conn: sqlite3.Connection) -> list[int]:
    """Withdrawn images the active model may still contain (their request failed)."""
    return [r[0] for r in conn.execute(
        "SELECT idx FROM samples WHERE request_id IS NOT NULL AND forgotten_in IS NULL "
        "ORDER BY idx")]


def _last_exact(conn: sqlite3.Connection) -> tuple[int | None, int]:
    """``(the newest exact version on the active version's chain, or None; the approximate
    steps after it)``. Exact: version 1 trained on its data, or a version made by an exact
    method (:data:`medunlearn.config.EXACT_METHODS`)."""
    versions = {r["n"]: r for r in conn.execute("SELECT n, parent, method FROM versions")}
    pre = conn.execute("SELECT COUNT(*) FROM samples WHERE request_id = ?", (BEFORE,)).fetchone()[0]
    n, steps = active_version(conn), 0
    while n in versions:
        v = versions[n]
        if v["method"] in EXACT_METHODS or (n == 1 and not pre):
            return n, steps
        steps += 1
        n = v["parent"]
    return None, steps


def approximate_steps(conn: sqlite3.Connection) -> int:
    """Approximate unlearning steps between the active version and the last exact model
    (version 1 trained on its data, or a version made by retraining)."""
    return _last_exact(conn)[1]


def sharded_start(reg: Path, conn: sqlite3.Connection) -> int | None:
    """The version a consolidation of a sharded model retrains from with ``sisa``, or None.

    It is the newest exact version on the active version's chain (the active one itself when no
    approximate step followed it), provided it is a sharded model whose slice checkpoints are
    all on disk with the SHA-256 its ``config.json`` records. ``sisa`` from it retrains only the
    shards holding an image withdrawn since (its checkpoints saw them; every other image
    withdrawn earlier it had left out already), from their last checkpoint before the first such
    slice, and keeps every other shard byte for byte: with the registry's seed, exactly the
    sharded model that training without every withdrawn image gives. None: a monolithic model,
    or the checkpoints are gone (the weights of a superseded version are purged once it holds a
    forgotten image, unless ``init --keep-superseded`` keeps them), so the consolidation retrains
    every shard from scratch.
    """
    n, _ = _last_exact(conn)
    if n is None:
        return None
    folder = reg / version_row(conn, n)["path"]
    try:
        section = read_json(folder / "config.json").get("shards") or {}
    except (OSError, ValueError, AttributeError):
        return None
    checkpoints = section.get("checkpoints")
    if not checkpoints or not section.get("exact", True):
        return None
    for s, row in enumerate(checkpoints):
        for r, digest in enumerate(row or [None]):
            # checkpoint.checkpoint_name (not imported: reading a registry does not need torch)
            path = folder / "shards" / f"shard-{s}" / f"slice-{r + 1}.safetensors"
            if not digest or not path.is_file() or sha256_file(path) != digest:
                return None
    return n


def active_dir(reg: Path, conn: sqlite3.Connection) -> Path:
    """The folder of the model version in service."""
    return reg / version_row(conn, active_version(conn))["path"]


def never_withdrawn(conn: sqlite3.Connection) -> list[int]:
    """Training indices no request has withdrawn (what any later training may use)."""
    return [r[0] for r in conn.execute(
        "SELECT idx FROM samples WHERE request_id IS NULL ORDER BY idx")]


def image_hashes(conn: sqlite3.Connection, indices: list[int]) -> dict[int, str]:
    """``{index: sha256}`` of the given training indices, from the manifest."""
    return dict(tuple(r) for r in select_in(conn, "SELECT idx, sha256 FROM samples WHERE idx "
                                             "IN ({in})", indices))


def retain_indices(reg: str | os.PathLike) -> list[int]:
    """The training indices any (re)training through the registry may use: the manifest minus
    every image ever withdrawn or forgotten."""
    conn = connect(reg)
    try:
        return never_withdrawn(conn)
    finally:
        conn.close()


def require_local_data(reg: Path, conn: sqlite3.Connection, data_root: str | None, *,
                       version: int | None = None) -> None:
    """Raise :class:`DataError` unless the data file of model ``version`` (default: the active
    one) is on disk already."""
    from medunlearn.config import DataConfig
    from medunlearn.data.dataset import from_record
    from medunlearn.data.files import locate
    from medunlearn.data.info import get_info
    from medunlearn.data.sources import source_of

    n = active_version(conn) if version is None else version
    config = read_json(reg / version_row(conn, n)["path"] / "config.json")
    if source_of(config["data"]) != "medmnist":
        return  # file sources name their own files; loading them reports what is missing
    cfg = from_record(DataConfig, config["data"])
    locate(get_info(cfg.dataset), cfg.size,
           data_root or get_meta(conn, "data_root") or cfg.data_root, download=False)

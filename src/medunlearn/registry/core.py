"""Registries of deployed models and the deletion-request workflow.

A registry folder ``REG`` holds::

    REG/registry.db        SQLite: manifest, versions, requests, attempts, audit ledger
    REG/LEDGER_HEAD        sequence number and hash of the last ledger entry (see .store)
    REG/lock               writer lock (fcntl.flock), held for a whole request
    REG/versions/<n>/      model version n, a complete run folder (v1 = the registered model)
    REG/staging/           candidate models being built (orphans are removed on the next run)

The workflow of :func:`forget` (all under the writer lock):

1. recover: refuse a registry whose head file or tables do not match its ledger; remove orphan
   staging folders and version folders without a database row; finish pending requests left
   by a crashed run;
2. validate the request (nothing is written when it is refused);
3. record it as *pending* (one transaction: request, its images, ledger entry); its images are
   withdrawn from every later retain set at once;
4. for each method of the chain (the request's method, else the registry's recommended one,
   then the fallbacks): unlearn from the *active* version into ``REG/staging``, excluding every
   image ever withdrawn from the retain set; verify against the active version with the safety
   gate; record the attempt. A passing candidate is renamed to ``REG/versions/<n>`` and one
   transaction records attempt, verdict, promotion, forgotten images and ledger entries.

A crash anywhere leaves the previous version active and the request pending (or complete); the
next ``forget`` or ``registry resume`` finishes it.

Layers: :mod:`.store` (transactions, ledger head, chunked ``IN`` lists, test stage hooks);
:class:`Plan` (the policy: which images a request forgets or excludes, its method chain, what a
promoted retraining takes out); :func:`_attempt` (unlearn + verify, files only) and
:func:`_promote` (rename + one transaction).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medunlearn import cache
from medunlearn.errors import CheckpointError, DataError, MedUnlearnError, OutputExistsError
from medunlearn.io import _fsync_dir, sha256_file, staged_output
from medunlearn.registry import ledger, replay, store
from medunlearn.registry.db import (
    LOCK_FILE,
    SCHEMA_VERSION,
    connect,
    get_meta,
    set_meta,
    writer_lock,
)
from medunlearn.registry.errors import AuditError, RegistryError, RequestError
from medunlearn.registry.replay import BEFORE, LEDGER_ITEM_KEYS, manifest_sha256, result_sha256
from medunlearn.registry.request import HASH_PATTERN, DeletionRequest, load_request
from medunlearn.registry.steps import (
    UnlearnStep,
    Verification,
    VerifyStep,
    remove_tree,
    resolve_steps,
    step_name,
)
from medunlearn.registry.store import select_in

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
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"index", "sha256", "label"} <= set(
                    reader.fieldnames):
                raise RegistryError(f"{path} must have the columns index,sha256,label.")
            for r in reader:
                rows.append((int(r["index"]), r["sha256"].strip().lower(), int(r["label"])))
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
        with open(path, newline="", encoding="utf-8") as fh:
            return sorted({int(r["index"]) for r in csv.DictReader(fh)})
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{path} is not a valid forget list ({_short_exc(exc)}); restore it "
                            "from the unlearning run.") from exc


def init_registry(model_dir: str | os.PathLike, out: str | os.PathLike, *,
                  methods: list[str] | None = None, data_root: str | None = None,
                  overwrite: bool = False, warm: bool = True) -> dict:
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
            (:func:`warm_features`), so the first request is as fast as the later ones. Skipped
            when the data cannot be loaded here (the first request then computes them).

    Returns:
        The registry's status (see :func:`status`).

    Raises:
        CheckpointError: the model folder is incomplete or its weights are unreadable.
        RegistryError: invalid manifest or method chain.
    """
    from medunlearn.checkpoint import load_run  # safetensors only: no pickle is ever loaded

    model_dir = Path(model_dir)
    run = load_run(model_dir)
    config = run.config
    _check_registrable(model_dir, config)
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
                        "dataset": str(config.get("data", {}).get("dataset", "")),
                        "manifest_sha256": manifest_sha256(rows)}
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
        try:
            warm_features(out, data_root=data_root)
        except (DataError, CheckpointError):
            pass  # an optimisation only: the first request computes what is missing
    return status(out)


# --------------------------------------------------------------------------- reading


def _version_row(conn: sqlite3.Connection, n: int) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM versions WHERE n = ?", (n,)).fetchone()
    if row is None:
        raise RegistryError(f"The registry's active version {n} has no record; run "
                            "'medunlearn audit verify' and restore the registry from a backup.")
    return row


def active_version(conn: sqlite3.Connection) -> int:
    return int(get_meta(conn, "active_version", "1"))


def withdrawn_indices(conn: sqlite3.Connection) -> list[int]:
    """Every training index ever withdrawn by a request (pending, completed or failed)."""
    return [r[0] for r in conn.execute(
        "SELECT idx FROM samples WHERE request_id IS NOT NULL ORDER BY idx")]


def _not_forgotten(conn: sqlite3.Connection) -> list[int]:
    """Withdrawn images the active model may still contain (their request failed)."""
    return [r[0] for r in conn.execute(
        "SELECT idx FROM samples WHERE request_id IS NOT NULL AND forgotten_in IS NULL "
        "ORDER BY idx")]


def approximate_steps(conn: sqlite3.Connection) -> int:
    """Approximate unlearning steps between the active version and the last exact model
    (version 1 trained on its data, or a version made by retraining)."""
    versions = {r["n"]: r for r in conn.execute("SELECT n, parent, method FROM versions")}
    pre = conn.execute("SELECT COUNT(*) FROM samples WHERE request_id = ?", (BEFORE,)).fetchone()[0]
    n, steps = active_version(conn), 0
    while n in versions:
        v = versions[n]
        if v["method"] == "retrain" or (n == 1 and not pre):
            return steps
        steps += 1
        n = v["parent"]
    return steps


def _never_withdrawn(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT idx FROM samples WHERE request_id IS NULL ORDER BY idx")]


def retain_indices(reg: str | os.PathLike) -> list[int]:
    """The training indices any (re)training through the registry may use: the manifest minus
    every image ever withdrawn or forgotten."""
    conn = connect(reg)
    try:
        return _never_withdrawn(conn)
    finally:
        conn.close()


def export_manifest(reg: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the registry's manifest as CSV: ``index,sha256,label,forgotten_in,request_id``.

    ``forgotten_in`` is the first model version without the image (empty: never forgotten);
    ``request_id`` is the request that withdrew it. Hashes only, never pixels.
    """
    import io

    from medunlearn.io import atomic_write_text

    conn = connect(reg)
    try:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["index", "sha256", "label", "forgotten_in", "request_id"])
        for r in conn.execute("SELECT idx, sha256, label, forgotten_in, request_id FROM samples "
                              "ORDER BY idx"):
            w.writerow(["" if v is None else v for v in r])
        return atomic_write_text(out, buf.getvalue())
    finally:
        conn.close()


def _request_summary(r: sqlite3.Row) -> dict:
    return {"id": r["id"], "subject": r["subject"], "status": r["status"],
            "submitted": r["submitted"], "completed": r["completed"],
            "from_version": r["from_version"], "to_version": r["to_version"]}


def status(reg: str | os.PathLike) -> dict:
    """The registry at a glance: active version, versions, pending and completed requests.

    Raises:
        RegistryError: ``reg`` is not a registry.
    """
    conn = connect(reg)
    try:
        active = active_version(conn)
        versions = [dict(r) for r in conn.execute("SELECT * FROM versions ORDER BY n")]
        reqs = conn.execute("SELECT * FROM requests ORDER BY num").fetchall()
        n_samples = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        forgotten = conn.execute(
            "SELECT COUNT(*) FROM samples WHERE forgotten_in IS NOT NULL").fetchone()[0]
        withdrawn = conn.execute(
            "SELECT COUNT(*) FROM samples WHERE request_id IS NOT NULL").fetchone()[0]
        seq, head = ledger.head(conn)
        steps, unforgotten = approximate_steps(conn), _not_forgotten(conn)
        problems = store.head_state(reg, conn)[0] + replay.ledger_problems(conn, Path(reg))
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
            "audit": {"ok": not problems, "problems": problems},
        }
    finally:
        conn.close()


# --------------------------------------------------------------------------- recovery


def recover(reg: Path, conn: sqlite3.Connection) -> list[str]:
    """Remove what a crashed run left behind (call with the writer lock held).

    First refuses a registry whose ``LEDGER_HEAD`` is missing or behind, or whose tables do
    not match its ledger (:class:`AuditError`; nothing is changed), and brings a head left behind
    by a crash up to date. Then removes every folder under ``REG/staging`` and every
    ``REG/versions/<n>`` without a database row (a crash between renaming a candidate into
    place and committing its promotion).

    Returns:
        The paths removed.
    """
    store.check_head(reg, conn)
    problems = replay.ledger_problems(conn, reg)
    if problems:
        raise AuditError(
            f"Refusing to change the registry {reg}: its tables do not match its audit ledger "
            f"({problems[0]}{f'; and {len(problems) - 1} more' if len(problems) > 1 else ''}). "
            f"Run 'medunlearn audit verify {reg}' for the full list and restore the registry "
            "from a backup.")
    removed = []
    staging = reg / "staging"
    staging.mkdir(exist_ok=True)
    for child in sorted(staging.iterdir()):
        remove_tree(child) if child.is_dir() else child.unlink(missing_ok=True)
        removed.append(str(child))
    known = {r[0] for r in conn.execute("SELECT path FROM versions")}
    versions = reg / "versions"
    for child in sorted(versions.iterdir()) if versions.is_dir() else []:
        if f"versions/{child.name}" not in known:
            remove_tree(child) if child.is_dir() else child.unlink(missing_ok=True)
            removed.append(str(child))
    if removed:
        _fsync_dir(staging)
        _fsync_dir(versions)
    return removed


# --------------------------------------------------------------------------- requests


def _patient_images(reg: Path, rid: str, patients: tuple[str, ...]) -> dict[str, list[int]]:
    """Training indices of each named patient, from the registered model's manifest.csv (in
    version 1, whose files the ledger vouches for).

    Raises:
        RequestError: the registered manifest has no patient_id column.
    """
    path = reg / "versions" / "1" / "manifest.csv"
    wanted = set(patients)
    out: dict[str, list[int]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "patient_id" not in (reader.fieldnames or []):
                raise RequestError(
                    f"Request {rid} names patients, but the registered model's manifest has no "
                    "patient ids (its data was loaded without a patient column). Name the "
                    "images by hash ('images') instead, or register a model trained with "
                    "--patient-column.")
            for r in reader:
                if r["patient_id"] in wanted:
                    out.setdefault(r["patient_id"], []).append(int(r["index"]))
    except OSError as exc:
        raise RequestError(f"Request {rid} names patients, but {path} cannot be read ({exc}); "
                           "name the images by hash instead.") from None
    return out


def _resolve(conn: sqlite3.Connection, req: DeletionRequest, reg: Path
             ) -> tuple[list[int], list[int], dict[int, str]]:
    """Map a request to training indices: ``(new, already_forgotten, sha256 by index)``.

    Raises:
        RequestError: unknown hashes or out-of-range indices (all listed).
    """
    found: dict[str, list[int]] = {}
    for r in select_in(conn, "SELECT idx, sha256 FROM samples WHERE sha256 IN ({in})",
                       req.images):
        found.setdefault(r["sha256"], []).append(r["idx"])
    unknown = [h for h in req.images if h not in found]
    n = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    bad = [i for i in req.indices if i >= n]
    by_patient = _patient_images(reg, req.id, req.patients) if req.patients else {}
    unknown_patients = [p for p in req.patients if p not in by_patient]
    if unknown or bad or unknown_patients:
        parts = []
        if unknown_patients:
            more = " ..." if len(unknown_patients) > 20 else ""
            parts.append(f"{len(unknown_patients)} patient id(s) have no image in this model's "
                         f"training manifest: {', '.join(unknown_patients[:20])}{more}")
        if unknown:
            more = " ..." if len(unknown) > 20 else ""
            parts.append(f"{len(unknown)} image hash(es) are not in this model's training "
                         f"manifest: {', '.join(unknown[:20])}{more}")
        if bad:
            parts.append(f"indices {bad[:20]} are out of range (the manifest has {n} images, "
                         f"indices 0..{n - 1})")
        raise RequestError(f"Request {req.id} was refused and nothing changed: "
                           f"{'; '.join(parts)}. Check that the hashes come from this model's "
                           "manifest.csv (medunlearn registry status shows the dataset).")
    named = {i for ids in found.values() for i in ids} | set(req.indices)
    named |= {i for ids in by_patient.values() for i in ids}
    # every byte-identical copy of a named image goes too (a copy under another patient id or
    # another index is the same image)
    copies = {r["sha256"] for r in select_in(conn, "SELECT sha256 FROM samples WHERE idx IN "
                                             "({in})", sorted(named))}
    targets = sorted(named | {r["idx"] for r in select_in(
        conn, "SELECT idx FROM samples WHERE sha256 IN ({in})", sorted(copies))})
    new, already, sha = [], [], {}
    for r in sorted(select_in(conn, "SELECT idx, sha256, forgotten_in FROM samples WHERE idx "
                              "IN ({in})", targets), key=lambda r: r["idx"]):
        sha[r["idx"]] = r["sha256"]
        (already if r["forgotten_in"] is not None else new).append(r["idx"])
    return new, already, sha


def method_chain(conn: sqlite3.Connection, requested: str | None) -> list[str]:
    """The methods to try in order: the requested one (or the registry's default), then the
    fallbacks that follow it in the registry's chain (else the chain's last, final fallback)."""
    chain = json.loads(get_meta(conn, "methods", "[]")) or ["retrain"]
    if requested is None:
        return chain
    if requested in chain:
        return chain[chain.index(requested):]
    return [requested] + ([chain[-1]] if chain[-1] != requested else [])


def _submit(reg: Path, conn: sqlite3.Connection, req: DeletionRequest) -> None:
    """Validate and record a new request as pending (or complete it as a no-op).

    A deletion request withdraws its new images; a consolidation lists every image withdrawn so
    far and is a no-op when the active model is exact already.
    """
    active = active_version(conn)
    if req.consolidate:
        withdrawn = withdrawn_indices(conn)
        items, sha, chain = {"consolidate": withdrawn}, _hashes(conn, withdrawn), ["retrain"]
        noop = approximate_steps(conn) == 0 and not _not_forgotten(conn)
        why = "the active model is exact already" if noop else None
    else:
        new, already, sha = _resolve(conn, req, reg)  # raises before anything is written
        items, chain = {"forget": new, "already": already}, method_chain(conn, req.method)
        noop, why = not new, None
    withdraw = items.get("forget", [])
    now = ledger.now_iso()
    with store.write(reg, conn):
        conn.execute("INSERT INTO requests(id, subject, content_sha256, body, status, submitted, "
                     "from_version) VALUES(?, ?, ?, ?, 'pending', ?, ?)",
                     (req.id, req.subject, req.content_sha256, ledger.canonical_json(req.body()),
                      now, active))
        conn.executemany("INSERT INTO request_items(request_id, idx, role) VALUES(?, ?, ?)",
                         [(req.id, i, role) for role, idx in items.items() for i in idx])
        select_in(conn, "UPDATE samples SET request_id = ? WHERE idx IN ({in})", withdraw,
                  [req.id])
        ledger.append(conn, "request", {
            "request": req.body(), "content_sha256": req.content_sha256,
            **{LEDGER_ITEM_KEYS[role]: [{"index": i, "sha256": sha[i]} for i in idx]
               for role, idx in items.items()},
            "active_version": active, "methods": chain,
        }, request_id=req.id, created=now)
        if noop:
            _complete_noop(conn, req.id, active, why)
    store.stage("after-submit")


def _hashes(conn: sqlite3.Connection, indices: list[int]) -> dict[int, str]:
    return dict(tuple(r) for r in select_in(conn, "SELECT idx, sha256 FROM samples WHERE idx "
                                             "IN ({in})", indices))


def _complete_noop(conn: sqlite3.Connection, rid: str, active: int, why: str | None) -> dict:
    """Finish a request without a new version (inside the caller's transaction); ``why`` is
    recorded when the reason is not simply that every image was forgotten already."""
    now = ledger.now_iso()
    result = _finish(conn, rid, "completed", active, active, None, now)
    reason = {}
    if why is not None:
        result["noop_reason"] = reason["reason"] = why
        conn.execute("UPDATE requests SET result = ? WHERE id = ?",
                     (ledger.canonical_json(result), rid))
    ledger.append(conn, "complete", {"status": "completed", "noop": True, "version": active,
                                     **reason, "forgotten": [],
                                     "result_sha256": result_sha256(result)},
                  request_id=rid, created=now)
    return result


def _attempt_rows(conn: sqlite3.Connection, rid: str) -> list[dict]:
    out = []
    for r in conn.execute("SELECT * FROM attempts WHERE request_id = ? ORDER BY n", (rid,)):
        d = dict(r)
        d["reasons"] = json.loads(d["reasons"])
        d["summary"] = json.loads(d["summary"])
        d["passed"] = bool(d["passed"])
        out.append(d)
    return out


def _items(conn: sqlite3.Connection, rid: str, role: str) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT idx FROM request_items WHERE request_id = ? AND role = ? ORDER BY idx",
        (rid, role))]


def _build_result(conn: sqlite3.Connection, rid: str, status_: str, from_v: int,
                  to_v: int | None, method: str | None) -> dict:
    attempts = _attempt_rows(conn, rid)
    versions = {r["n"]: r["weights_sha256"] for r in conn.execute(
        "SELECT n, weights_sha256 FROM versions")}
    body = json.loads(conn.execute("SELECT body FROM requests WHERE id = ?", (rid,)).fetchone()[0])
    return {
        "request_id": rid, "consolidate": bool(body.get("consolidate")), "status": status_,
        "from_version": from_v, "to_version": to_v,
        "method": method, "weights_before": versions.get(from_v),
        "weights_after": versions.get(to_v) if to_v is not None else None,
        "forgotten": len(_items(conn, rid, "forget")),
        "already_forgotten": len(_items(conn, rid, "already")),
        "consolidated": len(_items(conn, rid, "consolidate")),
        "attempts": [{"n": a["n"], "method": a["method"], "status": a["status"],
                      "passed": a["passed"], "reasons": a["reasons"],
                      "unlearn_seconds": a["summary"].get("unlearn_seconds"),
                      "verify_seconds": a["summary"].get("verify_seconds")} for a in attempts],
        "unlearn_seconds": sum(a["summary"].get("unlearn_seconds") or 0 for a in attempts),
        "verify_seconds": sum(a["summary"].get("verify_seconds") or 0 for a in attempts),
    }


def _finish(conn: sqlite3.Connection, rid: str, status_: str, from_v: int, to_v: int | None,
            method: str | None, now: str) -> dict:
    result = _build_result(conn, rid, status_, from_v, to_v, method)
    conn.execute("UPDATE requests SET status = ?, completed = ?, to_version = ?, result = ? "
                 "WHERE id = ?", (status_, now, to_v, ledger.canonical_json(result), rid))
    return result


def _record_attempt(conn: sqlite3.Connection, rid: str, n: int, method: str, status_: str,
                    ver: Verification | None, summary: dict, started: str) -> None:
    reasons = list(ver.reasons) if ver else [summary.get("error", "")]
    passed = bool(ver and ver.passed)
    finished = ledger.now_iso()
    summary_json = ledger.canonical_json(summary)
    conn.execute("INSERT INTO attempts(request_id, n, method, status, passed, reasons, summary, "
                 "started, finished) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (rid, n, method, status_, int(passed), ledger.canonical_json(reasons),
                  summary_json, started, finished))
    ledger.append(conn, "attempt", {
        "attempt": n, "method": method, "status": status_, "passed": passed, "reasons": reasons,
        "candidate_sha256": summary.get("weights_sha256"), "exclude_count":
        summary.get("exclude_count"), "forget_count": summary.get("forget_count"),
        "summary_sha256": ledger.sha256_text(summary_json), "started": started,
        "unlearn_seconds": summary.get("unlearn_seconds"),
        "verify_seconds": summary.get("verify_seconds"), "steps": summary.get("steps"),
    }, request_id=rid, created=finished)


EXCLUDED_FILE = "excluded.csv"  # read by evaluate_run: earlier-forgotten images, not retain


def _write_excluded(conn: sqlite3.Connection, run_dir: Path, exclude: list[int]) -> None:
    """List the excluded images in the candidate folder (``index,sha256,label``) so that the
    evaluation does not count earlier-forgotten images as retain members, and so that every
    version records what it was kept away from."""
    if not exclude or (run_dir / EXCLUDED_FILE).is_file():
        return
    import io

    from medunlearn.io import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "sha256", "label"])
    w.writerows(sorted(tuple(r) for r in select_in(
        conn, "SELECT idx, sha256, label FROM samples WHERE idx IN ({in})", exclude)))
    atomic_write_text(run_dir / EXCLUDED_FILE, buf.getvalue())


#: Errors of the environment (missing data, unreadable model, ...): the request stays pending so
#: that it can be resumed once fixed, instead of being recorded as a failed method.
ENVIRONMENT_ERRORS = (DataError, CheckpointError, OutputExistsError, RegistryError)


@dataclass
class Plan:
    """What a pending request asks of the model (the policy; no SQL or files here).

    A deletion request forgets its own new images (``own``) with its method chain; a
    consolidation owns no images and retrains without every image withdrawn so far.
    """

    rid: str
    num: int
    consolidate: bool
    forget: list[int]  # left out of the candidate's training: the request's images
    exclude: list[int]  # withdrawn earlier: in neither the forget nor the retain set
    chain: list[str]
    first_attempt: int  # attempts before a retry are kept; this one's numbers follow them

    @property
    def own(self) -> list[int]:
        """Images this request withdraws (marked forgotten by it on promotion)."""
        return [] if self.consolidate else self.forget

    def taken_out(self, method: str, still_in: set[int]) -> list[int]:
        """Images out of a promoted candidate that the registry did not yet count as forgotten:
        the request's own, and after an exact retraining every withdrawn image it left out."""
        swept = set(self.forget) | set(self.exclude) if method == "retrain" else set()
        return sorted(set(self.own) | (swept & still_in))


def _plan(conn: sqlite3.Connection, rid: str) -> Plan:
    row = conn.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone()
    body = json.loads(row["body"])
    consolidate = bool(body.get("consolidate"))
    # a consolidation retrains without every earlier-forgotten image: they are its forget set
    forget_idx = _items(conn, rid, "consolidate" if consolidate else "forget")
    exclude = [i for i in withdrawn_indices(conn) if i not in set(forget_idx)]
    chain = ["retrain"] if consolidate else method_chain(conn, body.get("method"))
    base = int(json.loads(row["result"] or "{}").get("retry_base", 0)) if row["status"] == \
        "pending" and row["result"] else 0
    return Plan(rid, row["num"], consolidate, forget_idx, exclude, chain, base)


def _process(reg: Path, conn: sqlite3.Connection, rid: str, unlearn: UnlearnStep,
             verify: VerifyStep, *, data_root: str | None, seed: int | None,
             log=None) -> dict:
    """Run the attempts of a pending request until one passes or the chain is exhausted."""
    plan = _plan(conn, rid)
    active = active_version(conn)
    if plan.own and not set(plan.own) & set(_not_forgotten(conn)):
        # a retried request whose images an exact retraining (a consolidation, or the retrain
        # fallback of a later request) has forgotten meanwhile: nothing is left to do
        with store.write(reg, conn):
            return _complete_noop(conn, rid, active, "its images were forgotten meanwhile by "
                                  "an exact retraining")
    seed = int(get_meta(conn, "seed", "0")) if seed is None else seed
    data_root = data_root or get_meta(conn, "data_root") or None
    done = len(_attempt_rows(conn, rid))
    for k in range(done - plan.first_attempt, len(plan.chain)):
        method, n = plan.chain[k], plan.first_attempt + k + 1
        if log:
            log(f"request {rid}: attempt {n} with {method} (forget {len(plan.forget)}, "
                f"exclude {len(plan.exclude)} earlier images)")
        started = ledger.now_iso()
        stage, ver, summary = _attempt(reg, conn, plan, method, n, active, unlearn, verify,
                                       seed=seed, data_root=data_root)
        if ver is not None and ver.passed:
            return _promote(reg, conn, plan, method, n, active, stage, ver, summary, started,
                            log=log)
        outcome = "error" if ver is None else "failed"
        with store.write(reg, conn):
            _record_attempt(conn, rid, n, method, outcome, ver, summary, started)
        store.stage(f"after-{outcome}-attempt")
        remove_tree(stage)
        if log:
            log(f"  attempt {n} ({method}) " + (f"failed: {summary['error']}" if ver is None
                else f"did not pass the safety gate: {'; '.join(ver.reasons)}"))
    now = ledger.now_iso()
    with store.write(reg, conn):
        result = _finish(conn, rid, "failed", active, None, None, now)
        ledger.append(conn, "failed", {"status": "failed", "version": active,
                                       "result_sha256": result_sha256(result)}, request_id=rid,
                      created=now)
    return result


def _attempt(reg: Path, conn: sqlite3.Connection, plan: Plan, method: str, n: int, active: int,
             unlearn: UnlearnStep, verify: VerifyStep, *, seed: int,
             data_root: str | None) -> tuple[Path, Verification | None, dict]:
    """Unlearn from the active version into ``REG/staging`` and verify the candidate.

    Returns:
        ``(candidate folder, verification or None when a step raised, attempt summary)``.

    Raises:
        One of :data:`ENVIRONMENT_ERRORS`: the request stays pending (nothing recorded).
    """
    stage = reg / "staging" / f"r{plan.num}-a{n}"
    remove_tree(stage)
    active_path = reg / _version_row(conn, active)["path"]
    summary = {"forget_count": len(plan.forget), "exclude_count": len(plan.exclude),
               "from_version": active, "steps": {"unlearn": step_name(unlearn),
                                                 "verify": step_name(verify)}}
    t0 = time.perf_counter()
    try:
        summary["unlearn_metrics"] = unlearn(active_path, method=method, forget=plan.forget,
                                             exclude=plan.exclude, out=stage, seed=seed,
                                             data_root=data_root)
        summary["unlearn_seconds"] = time.perf_counter() - t0
        store.stage("after-unlearn")
        _write_excluded(conn, stage, plan.exclude)
        t1 = time.perf_counter()
        ver = verify(stage, original=active_path, data_root=data_root)
        summary["verify_seconds"] = time.perf_counter() - t1
        summary["verdict"] = {"passed": bool(ver.passed), "reasons": list(ver.reasons),
                              "checks": list(ver.checks)}
        summary["metrics"] = getattr(ver, "metrics", None)
        summary["weights_sha256"] = sha256_file(stage / MODEL_FILE)
        store.stage("after-verify")
        return stage, ver, summary
    except ENVIRONMENT_ERRORS:
        remove_tree(stage)
        raise
    except Exception as exc:  # a method or the evaluation failed: record it, fall back
        summary.setdefault("unlearn_seconds", time.perf_counter() - t0)
        summary["error"] = f"{type(exc).__name__}: {exc}"
        return stage, None, summary


def _promote(reg: Path, conn: sqlite3.Connection, plan: Plan, method: str, n: int, active: int,
             stage: Path, ver: Verification, summary: dict, started: str, log=None) -> dict:
    """Rename the candidate into ``REG/versions`` and make it official in one transaction.

    A crash between the two leaves an orphan folder that :func:`recover` removes; the attempt
    is then redone.
    """
    rid = plan.rid
    t2 = time.perf_counter()
    new_n = conn.execute("SELECT MAX(n) FROM versions").fetchone()[0] + 1
    final = reg / "versions" / str(new_n)
    remove_tree(final)
    os.replace(stage, final)
    _fsync_dir(final.parent)
    store.stage("after-rename")
    files = store.folder_hashes(final)
    now = ledger.now_iso()
    with store.write(reg, conn):
        _record_attempt(conn, rid, n, method, "passed", ver, summary, started)
        conn.execute("INSERT INTO versions(n, path, weights_sha256, parent, request_id, "
                     "method, created) VALUES(?, ?, ?, ?, ?, ?, ?)",
                     (new_n, f"versions/{new_n}", summary["weights_sha256"], active, rid,
                      method, now))
        set_meta(conn, "active_version", str(new_n))
        # An exact retraining also leaves out the images of failed requests (they are in its
        # forget or exclude list): they are out of the model now, so they are marked too.
        newly = plan.taken_out(method, set(_not_forgotten(conn)))
        select_in(conn, "UPDATE samples SET forgotten_in = ? WHERE idx IN ({in})", newly,
                  [new_n])
        select_in(conn, "UPDATE samples SET request_id = ? WHERE idx IN ({in})", plan.own,
                  [rid])
        ledger.append(conn, "promote", {
            "version": new_n, "parent": active, "weights_sha256": summary["weights_sha256"],
            "config_sha256": files.get("config.json"), "method": method,
            "attempt": n, "files": files}, request_id=rid, created=now)
        result = _finish(conn, rid, "completed", active, new_n, method, now)
        result["promote_seconds"] = time.perf_counter() - t2
        conn.execute("UPDATE requests SET result = ? WHERE id = ?",
                     (ledger.canonical_json(result), rid))
        ledger.append(conn, "complete", {
            "status": "completed", "noop": False, "version": new_n, "forgotten": newly,
            **({"consolidated": plan.forget} if plan.consolidate else {}),
            "result_sha256": result_sha256(result)}, request_id=rid, created=now)
    store.stage("after-commit")
    if log:
        log(f"  promoted version {new_n} ({method})")
    return result


def _stored_result(row: sqlite3.Row) -> dict:
    result = json.loads(row["result"]) if row["result"] else {}
    return result | {"reused": True}


def forget(reg: str | os.PathLike, request: str | os.PathLike | dict | DeletionRequest, *,
           unlearn: UnlearnStep | None = None, verify: VerifyStep | None = None,
           data_root: str | None = None, seed: int | None = None,
           lock_timeout: float | None = None, download: bool = True, log=None) -> dict:
    """Process a deletion request: validate, unlearn, verify, promote (or fall back).

    Args:
        reg: The registry folder.
        request: A request JSON file, a dict, or a :class:`DeletionRequest`.
        unlearn: The unlearn step (default: ``run_unlearning``; see :mod:`.steps`).
        verify: The verify step (default: ``evaluate_run`` + ``gate``).
        data_root: MedMNIST folder (default: the one recorded at ``init``).
        seed: Seed of the unlearning (default: the registered model's seed).
        lock_timeout: Seconds to wait for another writer (default: wait).
        download: ``False``: refuse (before anything is written) when the model's data file is
            not on disk, instead of downloading it.
        log: Optional ``callable(str)`` for progress messages.

    Returns:
        The request's result: ``status`` ("completed" or "failed"), ``from_version``,
        ``to_version``, ``method``, ``attempts``, weights hashes, counts and timings;
        ``reused=True`` when the request had already been completed.

    Raises:
        RequestError: malformed request, unknown images, or an id reused with other content
            (nothing is changed).
        RegistryError: ``reg`` is not a registry.
    """
    t0 = time.perf_counter()
    reg = Path(reg)
    req = request if isinstance(request, DeletionRequest) else load_request(request)
    if req.method is not None and not req.consolidate:  # a consolidation always retrains
        _check_method(req)
    unlearn, verify = resolve_steps(unlearn, verify)
    with writer_lock(reg, timeout=lock_timeout), cache.session(reg / CACHE_DIR):
        conn = connect(reg)
        try:
            recover(reg, conn)
            if not download:
                _require_local_data(reg, conn, data_root)
            row = conn.execute("SELECT * FROM requests WHERE id = ?", (req.id,)).fetchone()
            if row is not None and row["content_sha256"] != req.content_sha256:
                raise RequestError(
                    f"Request id {req.id} was already submitted with different content "
                    f"(status {row['status']}). Nothing changed. Give a new request a new id; "
                    f"'medunlearn audit show {reg} {req.id} --out DIR' shows the original.")
            for p in conn.execute("SELECT id FROM requests WHERE status = 'pending' AND id != ? "
                                  "ORDER BY num", (req.id,)).fetchall():
                if log:
                    log(f"resuming pending request {p['id']}")
                _process(reg, conn, p["id"], unlearn, verify, data_root=data_root, seed=seed,
                         log=log)
            t_validate = time.perf_counter()
            if row is None:
                _submit(reg, conn, req)
            elif row["status"] == "completed":
                return _stored_result(row)
            elif row["status"] == "failed":
                _retry(reg, conn, req.id)
            row = conn.execute("SELECT * FROM requests WHERE id = ?", (req.id,)).fetchone()
            validate_seconds = time.perf_counter() - t_validate
            if row["status"] == "completed":  # a no-op: every image was already forgotten
                result = json.loads(row["result"])
            else:
                result = _process(reg, conn, req.id, unlearn, verify, data_root=data_root,
                                  seed=seed, log=log)
            result["validate_seconds"] = validate_seconds
            result["total_seconds"] = time.perf_counter() - t0
            result["reused"] = False
            keep_active_features(reg, conn)
            return result
        finally:
            conn.close()


def _require_local_data(reg: Path, conn: sqlite3.Connection, data_root: str | None, *,
                        version: int | None = None) -> None:
    """Raise :class:`DataError` unless the data file of model ``version`` (default: the active
    one) is on disk already."""
    from medunlearn.config import DataConfig
    from medunlearn.data.dataset import from_record
    from medunlearn.data.files import locate
    from medunlearn.data.info import get_info
    from medunlearn.data.sources import source_of
    from medunlearn.io import read_json

    n = active_version(conn) if version is None else version
    config = read_json(reg / _version_row(conn, n)["path"] / "config.json")
    if source_of(config["data"]) != "medmnist":
        return  # file sources name their own files; loading them reports what is missing
    cfg = from_record(DataConfig, config["data"])
    locate(get_info(cfg.dataset), cfg.size,
           data_root or get_meta(conn, "data_root") or cfg.data_root, download=False)


def _check_method(req: DeletionRequest) -> None:
    """Refuse an unknown method name before anything is written (a typo must not silently fall
    back to retraining)."""
    from medunlearn.errors import ConfigError
    from medunlearn.methods import get_method_class

    try:
        get_method_class(req.method)
    except ConfigError as exc:
        raise RequestError(f"Request {req.id} was refused and nothing changed: {exc}") from None


def _retry(reg: Path, conn: sqlite3.Connection, rid: str) -> None:
    """Re-open a failed request (same content resubmitted): its method chain starts again."""
    base = len(_attempt_rows(conn, rid))
    row = conn.execute("SELECT body FROM requests WHERE id = ?", (rid,)).fetchone()
    added: list[int] = []
    if json.loads(row["body"]).get("consolidate"):  # images withdrawn since the first try
        have = set(_items(conn, rid, "consolidate"))
        added = [i for i in withdrawn_indices(conn) if i not in have]
    with store.write(reg, conn):
        conn.execute("UPDATE requests SET status = 'pending', completed = NULL, result = ? "
                     "WHERE id = ?", (ledger.canonical_json({"retry_base": base}), rid))
        conn.executemany("INSERT INTO request_items(request_id, idx, role) VALUES(?, ?, ?)",
                         [(rid, i, "consolidate") for i in added])
        sha = _hashes(conn, added)
        ledger.append(conn, "retry", {"previous_attempts": base} | (
            {"consolidate_added": [{"index": i, "sha256": sha[i]} for i in added]}
            if added else {}), request_id=rid)


def resume(reg: str | os.PathLike, *, unlearn: UnlearnStep | None = None,
           verify: VerifyStep | None = None, data_root: str | None = None,
           seed: int | None = None, download: bool = True, log=None) -> list[dict]:
    """Clean up after a crash and finish every pending request (``download``: see
    :func:`forget`).

    Returns:
        The results of the requests finished now.
    """
    reg = Path(reg)
    unlearn, verify = resolve_steps(unlearn, verify)
    with writer_lock(reg), cache.session(reg / CACHE_DIR):
        conn = connect(reg)
        try:
            recover(reg, conn)
            if not download:
                _require_local_data(reg, conn, data_root)
            done = [_process(reg, conn, p["id"], unlearn, verify, data_root=data_root,
                             seed=seed, log=log)
                    for p in conn.execute("SELECT id FROM requests WHERE status = 'pending' "
                                          "ORDER BY num").fetchall()]
            keep_active_features(reg, conn)
            return done
        finally:
            conn.close()


# --------------------------------------------------------------------------- output cache

#: Derived data (``medunlearn.cache``): the active version's features on the verification images,
#: so that a request runs only the candidate model over them (and not even that when the
#: candidate's unlearning changed only the head). Safe to delete at any time; the
#: audit neither reads nor hashes it.
CACHE_DIR = "cache"


def keep_active_features(reg: Path, conn: sqlite3.Connection) -> None:
    """Write the active version's features computed in this session to ``REG/cache`` and delete
    the tables of every other backbone (earlier versions, rejected candidates)."""
    from medunlearn.checkpoint import load_run

    session = cache.current()
    if session is None or not session.features:
        return
    digest = cache.backbone_digest(load_run(reg / _version_row(conn, active_version(conn))["path"]
                                            ).model)
    for key in list(session.features):
        if key.startswith(digest):
            cache.save_features(key)
    cache.prune(reg / CACHE_DIR, {digest})


def warm_features(reg: str | os.PathLike, *, data_root: str | None = None) -> int:
    """Compute the active version's features on the images every verification uses (validation,
    test and the seeded retain subset; see ``steps.VERIFY_OPTIONS``) and keep them in
    ``REG/cache``. Returns the number of images run (0 when they were cached already)."""
    from medunlearn.checkpoint import load_run_and_data
    from medunlearn.evaluation.api import EvalOptions, retain_subset
    from medunlearn.loop import Runtime, infer
    from medunlearn.registry.steps import VERIFY_OPTIONS

    reg = Path(reg)
    conn = connect(reg)
    try:
        with cache.session(reg / CACHE_DIR) as session:
            run, dataset = load_run_and_data(reg / _version_row(conn, active_version(conn))["path"],
                                             data_root=data_root or get_meta(conn, "data_root")
                                             or None)
            opts = EvalOptions(**VERIFY_OPTIONS)
            rt = Runtime.create(opts.device, "fp32", opts.threads)
            pool = retain_subset(np.asarray(_never_withdrawn(conn), dtype=np.int64),
                                 opts.retain_limit, seed=opts.seed, n_train=len(dataset.train))
            before = session.misses
            for split, idx in ((dataset.train, pool), (dataset.val, None), (dataset.test, None)):
                infer(run.model, split, idx, runtime=rt, batch_size=opts.batch_size,
                      features=True)
            keep_active_features(reg, conn)
            return session.misses - before
    finally:
        conn.close()


__all__ = ["MedUnlearnError", "export_manifest", "forget", "init_registry", "recover", "resume",
           "retain_indices", "status", "warm_features"]

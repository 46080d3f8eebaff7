"""The registry's shadow models: trained once for the registered model, used by the safety gate
of every request, and retrained without each forgotten image before its request completes.

K shadow models of version 1 (its own recipe, each on a balanced random half of the training
images: :mod:`medunlearn.runs.shadows`) give every training image an IN and an OUT
distribution of its confidence, the evidence of the gate's per-image ``membership`` check
(:mod:`medunlearn.evaluation.membership`). Every version of a registry descends from version 1
on the same data, so one set serves every request.

The set is itself derived from patients' images, so it is forgotten too: when a request
forgets images, every shadow trained on one of them is retrained on its half without them (the
same seed, so the same model the design gives) before the promotion commits
(:func:`prepare_refresh`); the unaffected members are copied. No member keeps its outputs on a
forgotten image either (those rows are stored as NaN: a model's outputs on an image are data
derived from it; the membership test never reads them). The new generation is recorded by
a ``shadows`` ledger entry in the promotion's transaction, which also purges every file of the
generation it replaces (:mod:`.shadow_records`). A gate never uses a set that still holds a
forgotten image (:func:`for_gate` refuses it; ``registry shadows`` retrains it).

Front doors: :func:`train` (``registry init --shadows K``, ``registry shadows REG --k K``;
resumable: finished shadows of an interrupted run are reused), :func:`for_gate` and
:func:`prepare_refresh` (the request workflow).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from medunlearn.fileio import read_json
from medunlearn.registry import ledger, replay, shadow_records, store
from medunlearn.registry.db import connect, get_meta, writer_lock
from medunlearn.registry.errors import RegistryError
from medunlearn.registry.shadow_records import ENTRY_KIND


def check_k(k: int) -> None:
    """Refuse a number of shadow models the membership test cannot use (before any write).

    Raises:
        ConfigError: K below 4 (or not a whole number).
    """
    from medunlearn.errors import ConfigError
    from medunlearn.evaluation.companions import balanced_halves

    if isinstance(k, bool) or not isinstance(k, int):
        raise ConfigError(f"--shadows/--k must be a whole number (at least 4), not {k!r}.")
    balanced_halves(max(k, 1), k, seed=0)  # the explanatory error for K < 4


def forgotten(conn: sqlite3.Connection) -> list[int]:
    """Training indices the registry has forgotten (no model from then on may hold them)."""
    return [r[0] for r in conn.execute(
        "SELECT idx FROM samples WHERE forgotten_in IS NOT NULL ORDER BY idx")]


def for_gate(reg: str | os.PathLike, conn: sqlite3.Connection) -> Path | None:
    """The folder of the shadow set a request's gate uses (None: the registry has none).

    Raises:
        RegistryError: the set still holds a forgotten image (it is never used then), or files
            of it were deleted.
    """
    last = shadow_records.latest(ledger.entries(conn))
    if last is None:
        return None
    body = last["body"]
    left = shadow_records.stale(body, forgotten(conn))
    if left:
        raise RegistryError(
            f"The shadow models of {reg} were trained on {len(left)} forgotten image(s) and are "
            f"not used. Retrain them without those images first: "
            f"'{shadow_records.command(reg, body.get('k'))}'.")
    if not _complete(Path(reg), last):
        raise RegistryError(
            f"Files of the shadow models of {reg} were deleted, so the gate's per-image "
            "membership check cannot run and the request is not verified (it stays pending). "
            f"Train them again: '{shadow_records.command(reg, body.get('k'))}', then "
            f"'medunlearn registry resume {reg}'.")
    return shadow_records.folder(reg, body["generation"])


# --------------------------------------------------------------------------- training


def _inputs(reg: Path, conn: sqlite3.Connection, data_root: str | None):
    """Version 1's data (checked against the manifest), recipe and identity."""
    from medunlearn.data import load_from_record
    from medunlearn.runs.shadows import run_recipe

    config = read_json(reg / "versions" / "1" / "config.json")
    root = data_root or get_meta(conn, "data_root") or None
    data = load_from_record(config["data"], seed=int(config.get("seed") or 0),
                            **({"data_root": root} if root else {}))
    manifest = [r[0] for r in conn.execute("SELECT sha256 FROM samples ORDER BY idx")]
    if list(data.train.hashes) != manifest:
        raise RegistryError(
            f"The training data loaded for {reg} (from {root or 'the recorded location'}) is "
            "not the data the registry's manifest lists (other files or another version); its "
            "shadow models must be trained on exactly the registered model's images. Point "
            "--data-root at the data the model was trained on.")
    init = next(e for e in ledger.entries(conn) if e["kind"] == "init")["body"]
    v1 = conn.execute("SELECT weights_sha256 FROM versions WHERE n = 1").fetchone()
    source = {"path": "versions/1", "version": 1, "fingerprint": init.get("fingerprint"),
              "weights_sha256": v1[0] if v1 else None}
    return data, run_recipe(config), source


def _build(reg: Path, conn: sqlite3.Connection, mask: np.ndarray, *, k: int, base_seed: int,
           excluded: list[int], reason: str, data_root: str | None, progress: bool,
           previous: dict | None, retrained: list[int], threads: int | None = None) -> dict:
    """Train (or finish) the next generation with design ``mask``; the body of its ledger
    entry (``previous``: the entry of the generation it replaces, whose unchanged members are
    copied and whose files it purges)."""
    from medunlearn.runs.shadows import train_companions

    entries = ledger.entries(conn)
    gens = [e["body"].get("generation") for e in shadow_records.shadow_entries(entries)]
    g = max([x for x in gens if isinstance(x, int)], default=0) + 1
    out = shadow_records.folder(reg, g)
    data, recipe, source = _inputs(reg, conn, data_root)
    old = shadow_records.folder(reg, previous["body"]["generation"]) if previous else None
    t0 = time.perf_counter()
    cs = train_companions(data, mask, recipe=recipe, out=out, base_seed=base_seed,
                          source=source, rebuild=shadow_records.command(reg, k),
                          overwrite=True, progress=progress, reuse_from=old,
                          blank_unused=True, threads=threads)
    return {"generation": g, "k": cs.k, "base_seed": base_seed,
            "fingerprint": cs.manifest["fingerprint"],
            "design_sha256": cs.manifest["design_sha256"], "excluded": sorted(excluded),
            "retrained": retrained, "copied": [j for j in range(cs.k) if j not in retrained],
            "reason": reason, "source": source, "seconds": round(time.perf_counter() - t0, 3),
            "files": store.folder_hashes(out),
            "purged": shadow_records.purge_plan(entries) if previous else []}


def prepare_refresh(reg: str | os.PathLike, conn: sqlite3.Connection, gone: set[int], *,
                    data_root: str | None = None, reason: str = "request",
                    log=None, threads: int | None = None) -> dict | None:
    """Retrain every shadow trained on one of the images ``gone`` (all forgotten images once
    the promotion commits) on its half without them; copy the others. Returns the body of
    the ``shadows`` ledger entry to commit (None: no set, or no member held those images)."""
    reg = Path(reg)
    last = shadow_records.latest(ledger.entries(conn))
    if last is None or not shadow_records.stale(last["body"], gone):
        return None
    from medunlearn.runs.shadows import load_companions

    body = last["body"]
    cs = load_companions(shadow_records.folder(reg, body["generation"]))
    out_idx = np.asarray(sorted(gone), dtype=np.int64)
    mask = cs.membership.copy()
    mask[:, out_idx] = False
    retrained = cs.trained_on(out_idx)
    if log:
        log(f"  retraining {len(retrained)} of {cs.k} shadow models without the forgotten "
            "images")
    return _build(reg, conn, mask, k=cs.k, base_seed=int(body["base_seed"]),
                  excluded=sorted(set(body.get("excluded") or []) | set(gone)), reason=reason,
                  data_root=data_root, progress=False, previous=last, retrained=retrained,
                  threads=threads)


def _complete(reg: Path, last: dict) -> bool:
    """Whether every file the ledger recorded for the set in use is on disk."""
    gen = shadow_records.folder(reg, last["body"]["generation"])
    return all((gen / name).is_file() for name in last["body"].get("files") or {})


def train(reg: str | os.PathLike, *, k: int = shadow_records.DEFAULT_K, seed: int | None = None,
          data_root: str | None = None, replace: bool = False, progress: bool = True,
          lock_timeout: float | None = None, threads: int | None = None) -> dict:
    """Train the registry's K shadow models (or finish an interrupted training, or retrain a
    set that still holds forgotten images) and record them in the ledger.

    Args:
        reg: The registry folder.
        k: Number of shadow models (at least 4; 16 to 32 recommended).
        seed: Base seed of the design and of every shadow (default: the registry's seed).
        data_root: Where the training data is (default: as recorded at ``init``).
        replace: Train a new set even though one is recorded (another K or seed); the old set
            is purged. A set whose files were deleted is trained again without it.
        progress: Show a progress bar.
        lock_timeout: Seconds to wait for another writer.
        threads: CPU threads for torch (default: the model's recipe).

    Returns:
        ``{"status": "trained" | "refreshed" | "current", "generation", "k", "retrained",
        "copied", "purged", "seconds"}``.

    Raises:
        ConfigError: K below 4 (nothing is written).
        RegistryError: a recorded set of another K (without ``replace``), or data that is not
            the registry's.
        AuditError: the registry fails its audit.
    """
    check_k(k)
    reg = Path(reg)
    with writer_lock(reg, timeout=lock_timeout):
        conn = connect(reg)
        try:
            replay.check_before_write(reg, conn)
            last = shadow_records.latest(ledger.entries(conn))
            gone = set(forgotten(conn))
            if last is not None and not replace:
                body = last["body"]
                if body.get("k") != k or (seed is not None and seed != body.get("base_seed")):
                    raise RegistryError(
                        f"{reg} already has {body.get('k')} shadow models (seed "
                        f"{body.get('base_seed')}); pass --replace to train a new set with "
                        f"--k {k} (the old one is purged), or use --k {body.get('k')}.")
                seed = body.get("base_seed")
            if last is not None and not replace and _complete(reg, last):
                new = prepare_refresh(reg, conn, gone, data_root=data_root, reason="stale",
                                      threads=threads)
                status = "refreshed" if new else "current"
            else:  # none yet, --replace, or files of the set in use were deleted
                from medunlearn.evaluation.companions import balanced_halves

                base = int(get_meta(conn, "seed", "0")) if seed is None else int(seed)
                n = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
                pool = np.setdiff1d(np.arange(n), np.asarray(sorted(gone), dtype=np.int64))
                mask = balanced_halves(n, k, seed=base, pool=pool)
                new = _build(reg, conn, mask, k=k, base_seed=base, excluded=sorted(gone),
                             reason=("replace" if replace else "rebuilt") if last else "init",
                             data_root=data_root,
                             progress=progress, previous=last, retrained=list(range(k)),
                             threads=threads)
                status = "trained"
            if new is not None:
                with store.write(reg, conn):
                    ledger.append(conn, ENTRY_KIND, new)
                shadow_records.apply_purges(reg, ledger.entries(conn))
            body = new or last["body"]
            return {"status": status, "generation": body["generation"], "k": body["k"],
                    "retrained": len(new["retrained"]) if new else 0,
                    "copied": len(new["copied"]) if new else body["k"],
                    "purged": len(new["purged"]) if new else 0,
                    "seconds": new["seconds"] if new else 0.0,
                    "folder": str(shadow_records.folder(reg, body["generation"]))}
        finally:
            conn.close()


def summary(body: dict | None) -> dict | None:
    """What a request's result says about the shadow models it retrained."""
    if body is None:
        return None
    return {"generation": body["generation"], "k": body["k"],
            "retrained": len(body["retrained"]), "copied": len(body["copied"]),
            "purged_files": len(body["purged"]), "seconds": body["seconds"]}


__all__ = ["ENTRY_KIND", "check_k", "for_gate", "forgotten", "prepare_refresh", "summary", "train"]

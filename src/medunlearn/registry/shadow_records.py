"""Where the registry's shadow models are stored, what the ledger says about them, and what a
forgotten image leaves behind in them (the training itself: :mod:`.shadows`).

The shadow models (K models of the registered model, each trained with its recipe on a random
half of the training images; the evidence behind the safety gate's per-image ``membership``
check) live in generations, each a complete companion-model folder
(:mod:`medunlearn.runs.shadows`)::

    REG/shadows/g<G>/companions.json, membership.safetensors, calibration.json,
                     members/kNN.safetensors, kNN.outputs.safetensors, kNN.json

Every generation is recorded by a ``shadows`` ledger entry: the SHA-256 of each of its files,
the training images left out of every member (``excluded``: the forgotten ones), which members
were trained and which copied from the generation before, and the files of the superseded
generation it purges (``purged``; all of them: a superseded generation is deleted entirely, the
ledger keeps its hashes). Only the latest entry's generation is used.

This module needs only the store (it reads the ledger entries its callers pass), so the ledger
replay and the residue scan can check the files without importing the training code.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from medunlearn.fileio import _fsync_dir, sha256_file
from medunlearn.registry import store

DIR = "shadows"
ENTRY_KIND = "shadows"
#: Recommended number of shadow models (16 to 32; at least 4).
DEFAULT_K = 16


def folder(reg: str | os.PathLike, generation: int) -> Path:
    """The folder of shadow generation ``generation``."""
    return Path(reg) / DIR / f"g{int(generation)}"


def command(reg: str | os.PathLike, k: int = DEFAULT_K) -> str:
    """The command that trains (or resumes, or refreshes) a registry's shadow models."""
    return f"medunlearn registry shadows {reg} --k {k}"


def shadow_entries(entries: list[dict]) -> list[dict]:
    """The ``shadows`` ledger entries, in order."""
    return [e for e in entries if e["kind"] == ENTRY_KIND and isinstance(e["body"], dict)]


def latest(entries: list[dict]) -> dict | None:
    """The latest ``shadows`` entry (its generation is the one in use), or None."""
    found = shadow_entries(entries)
    return found[-1] if found else None


def stale(body: dict, forgotten: set[int] | list[int]) -> list[int]:
    """Forgotten training images that some member of the generation ``body`` was trained on
    (every image outside ``excluded`` is IN for at least one member of a balanced design)."""
    return sorted(set(forgotten) - set(body.get("excluded") or []))


def _files(body: dict) -> dict[str, str]:
    files = body.get("files")
    return files if isinstance(files, dict) else {}


def purged_files(entries: list[dict]) -> dict[str, str]:
    """``{path relative to REG: sha256}`` of every shadow file a ``shadows`` entry purged."""
    out = {}
    for e in shadow_entries(entries):
        for p in e["body"].get("purged") or []:
            if isinstance(p, dict):
                out[str(p.get("file"))] = p.get("sha256")
    return out


def purge_plan(entries: list[dict]) -> list[dict]:
    """``[{file, sha256}]``: every file of the generation in use (the one a new generation
    supersedes), as its entry recorded them."""
    last = latest(entries)
    if last is None:
        return []
    base = f"{DIR}/g{last['body'].get('generation')}"
    return [{"file": f"{base}/{name}", "sha256": h} for name, h in sorted(_files(last["body"]
                                                                                ).items())]


def _matches(path: Path, sha256: str | None) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode) and sha256_file(path) == sha256
    except OSError:
        return False


def apply_purges(reg: str | os.PathLike, entries: list[dict]) -> list[str]:
    """Delete every shadow file a ``shadows`` entry purged that is still on disk with its
    recorded bytes (never anything else), and the emptied generation folders."""
    reg = Path(reg)
    removed = []
    for rel, h in purged_files(entries).items():
        path = reg / rel
        if _matches(path, h):
            path.unlink()
            removed.append(str(path))
    for gen in sorted((reg / DIR).iterdir()) if (reg / DIR).is_dir() else []:
        if gen.is_dir() and not gen.is_symlink() and not any(
                p.is_file() for p in gen.rglob("*")):
            for sub in sorted(gen.rglob("*"), reverse=True):
                sub.rmdir()
            gen.rmdir()
            removed.append(str(gen))
    if removed:
        _fsync_dir(reg / DIR)
    return removed


def file_problems(reg: str | os.PathLike, entries: list[dict]) -> list[str]:
    """The files of the generation in use against its ledger entry (a changed or added file:
    its evidence would decide verdicts), and files at a purged path with other bytes (planted).
    A deleted file is only a warning (:func:`audit_notes`): the set is derived data, which a
    gate then refuses to use until ``registry shadows`` trains it again."""
    reg = Path(reg)
    problems = []
    last = latest(entries)
    if last is not None:
        gen = folder(reg, last["body"].get("generation"))
        recorded = _files(last["body"])
        actual = store.folder_hashes(gen) if gen.is_dir() else {}
        for name in sorted(set(recorded) | set(actual)):
            if name not in actual:
                continue  # deleted: a warning (audit_notes); the gate refuses the set
            if name not in recorded:
                problems.append(f"shadow models: {gen / name} was added after ledger entry "
                                f"{last['seq']} recorded the set")
            elif actual[name] != recorded[name]:
                problems.append(f"shadow models: {gen / name} has SHA-256 {actual[name]} but "
                                f"ledger entry {last['seq']} recorded {recorded[name]} (the file "
                                "was changed)")
    for rel, h in sorted(purged_files(entries).items()):
        path = reg / rel
        if path.exists() and not _matches(path, h):
            problems.append(f"shadow models: {path} was purged by design but a file with other "
                            "bytes is there (planted)")
    return problems


def _unrecorded(reg: Path, entries: list[dict]) -> list[Path]:
    known = {f"g{e['body'].get('generation')}" for e in shadow_entries(entries)}
    root = reg / DIR
    return [p for p in sorted(root.iterdir()) if p.name not in known] if root.is_dir() else []


def audit_notes(reg: str | os.PathLike, entries: list[dict]) -> list[str]:
    """Warnings: purged shadow files still on disk (an interrupted purge), and generation
    folders no ledger entry records (a retraining that was interrupted; the next one resumes
    it)."""
    reg = Path(reg)
    out = [f"{reg / rel} was purged by design but is still on disk (an interrupted purge); the "
           "next 'forget' or 'registry resume' deletes it"
           for rel, h in sorted(purged_files(entries).items()) if _matches(reg / rel, h)]
    out += [f"{p} holds shadow models no ledger entry records (an interrupted training; "
            "the next training of the registry's shadows resumes or replaces it)"
            for p in _unrecorded(reg, entries)]
    last = latest(entries)
    if last is not None:
        gen = folder(reg, last["body"].get("generation"))
        gone = [n for n in sorted(_files(last["body"])) if not (gen / n).is_file()]
        if gone:
            out.append(f"{len(gone)} file(s) of the shadow models in {gen} were deleted (e.g. "
                       f"{gone[0]}): requests are refused until "
                       f"'{command(reg, last['body'].get('k'))}' trains them again")
    return out


def scan(reg: str | os.PathLike, entries: list[dict], forgotten: set[int]) -> list[dict]:
    """Residue in ``REG/shadows``: ``[{path, what, kept_until}]``: the files of a generation in
    use that was trained on a forgotten image (none after a completed request: it is retrained
    first), superseded files whose purge was interrupted, and unrecorded generations."""
    reg = Path(reg)
    out = []
    last = latest(entries)
    if last is not None and stale(last["body"], forgotten):
        gen = folder(reg, last["body"].get("generation"))
        out += [{"path": str(gen / name), "what": "a shadow model (or its outputs) trained on a "
                 "forgotten image; 'medunlearn registry shadows' retrains it", "kept_until": None}
                for name in sorted(_files(last["body"])) if (gen / name).is_file()]
    out += [{"path": str(reg / rel), "what": "a superseded shadow model file (an interrupted "
             "purge)", "kept_until": None}
            for rel, h in sorted(purged_files(entries).items()) if _matches(reg / rel, h)]
    for gen in _unrecorded(reg, entries):
        out += [{"path": str(p), "what": "shadow models not recorded in the ledger (an "
                 "interrupted training)", "kept_until": None}
                for p in sorted(gen.rglob("*")) if p.is_file()]
    return out


def ledger_view(entries: list[dict], request_id: str | None = None) -> dict | None:
    """What the ledger says about the shadows a request (or the registry) ends with: the
    generation in use after it, how many members were retrained and copied."""
    found = [e for e in shadow_entries(entries)
             if request_id is None or e["request_id"] == request_id]
    return found[-1]["body"] if found else None


__all__ = ["DEFAULT_K", "DIR", "ENTRY_KIND", "apply_purges", "audit_notes", "command",
           "file_problems", "folder", "latest", "ledger_view", "purge_plan", "purged_files",
           "scan", "shadow_entries", "stale"]

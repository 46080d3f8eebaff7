"""Audit: check a registry against its ledger, anchors and certificates kept outside it.

:func:`audit_registry` (the ``audit verify`` command) recomputes the ledger's hash chain, checks the
head file and any anchors kept outside the registry, replays the ledger into the rows every table
must hold and compares them column by column (:mod:`.replay`), and hashes every file of every
model version against the hashes its ledger entry recorded. See docs/registry.md for what this
does and does not catch.

The audit reads one read-only snapshot (:mod:`.reading`: it works on a write-protected copy and
creates no file), and with ``certificates`` compares every statement of each ``certificate.json``
with what the registry says (:func:`.certificate.differences`). Certificates themselves are
built in :mod:`.certificate`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medunlearn.registry import certificate as certificates
from medunlearn.registry import ledger, reading, replay, residue
from medunlearn.registry.db import LOCK_FILE, require_registry
from medunlearn.registry.errors import RegistryError
from medunlearn.registry.steps import REAL_STEPS
from medunlearn.registry.versions import MODEL_FILE

ANCHOR = re.compile(r"([0-9]{1,18}):([0-9a-fA-F]{64})")


@dataclass
class AuditReport:
    """The outcome of :func:`audit_registry`."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: dict = field(default_factory=dict)


def parse_anchor(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (a ledger entry number from 1 and its 64-character hash) as a pair.

    Raises:
        RegistryError: anything else (said briefly: the text is not echoed in full).
    """
    m = ANCHOR.fullmatch(text.strip())
    if not m or int(m.group(1)) < 1:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise RegistryError(f"--anchor {shown!r} is not SEQ:HASH (a ledger entry number from 1, "
                            "a colon and the 64-character hash), e.g. 12:3f5a...; copy it from "
                            "'medunlearn registry status'.")
    return int(m.group(1)), m.group(2).lower()


def audit_registry(reg: str | os.PathLike, *, load_models: bool = False,
                   anchors: list[tuple[int, str]] | None = None,
                   certificate_files: list[str | os.PathLike] | None = None) -> AuditReport:
    """Check the ledger chain, model files and tables of a registry.

    Args:
        reg: The registry folder (it may be read-only: nothing is written to it).
        load_models: Also load every version with ``checkpoint.load_run`` (safetensors, no
            pickle) to prove the weights fit their config.
        anchors: ``(seq, hash)`` pairs kept outside the registry (a certificate's ledger head,
            a hash sent in a ticket): each entry must still exist with that hash. A chain
            rewritten from scratch by someone with write access passes every internal check but
            not an anchor taken before the rewrite.
        certificate_files: ``certificate.json`` files issued earlier: their ledger entries are
            anchors, and every statement in them must match the registry.

    Returns:
        An :class:`AuditReport`; ``problems`` name each bad entry, row, file or statement.

    Raises:
        RegistryError: ``reg`` is not a registry, or a certificate file is not one.
    """
    reg = Path(reg)
    require_registry(reg)
    loaded = [(str(c), certificates.load(c)) for c in certificate_files or []]
    anchors = list(anchors or [])
    for name, cert in loaded:
        anchors += certificates.anchors(cert, name)
    with _shared_lock(reg), reading.snapshot(reg) as snap:
        return _audit(snap, load_models, anchors, loaded)


@contextlib.contextmanager
def _shared_lock(reg: Path) -> Iterator[None]:
    """Wait for a running request (a shared ``flock`` on ``REG/lock``), without creating the
    lock file: a registry copied to read-only media has nobody to wait for."""
    import fcntl

    try:
        fd = os.open(reg / LOCK_FILE, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def certificate_anchors(path: str | os.PathLike) -> list[tuple[int, str]]:
    """The ledger entries ``(seq, hash)`` a ``certificate.json`` recorded: the request's own
    entries and the ledger head at issue.

    Raises:
        RegistryError: the file is missing or is not a certificate.
    """
    return certificates.anchors(certificates.load(path), str(path))


def _check_anchors(conn, anchors: list[tuple[int, str]]) -> list[str]:
    problems = []
    for seq, h in anchors:
        if not 0 < seq < 2 ** 63:
            problems.append(f"anchor {str(seq)[:20]}: not a ledger entry number")
            continue
        row = conn.execute("SELECT hash FROM ledger WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            problems.append(f"anchor {seq}:{h[:16]}...: the ledger has no entry {seq} any more "
                            "(entries were removed)")
        elif row["hash"] != h:
            problems.append(f"anchor {seq}:{h[:16]}...: ledger entry {seq} now has hash "
                            f"{row['hash'][:16]}... (the ledger was rewritten)")
    return problems


def _load_problems(reg: Path, expected: dict) -> list[str]:
    """Load every version with ``checkpoint.load_run`` (safetensors, no pickle)."""
    from medunlearn.checkpoint import load_run
    from medunlearn.errors import CheckpointError

    problems = []
    for n in sorted(expected["versions"], key=str):
        folder = reg / "versions" / str(n)
        if (folder / MODEL_FILE).is_file():
            try:
                load_run(folder)
            except CheckpointError as exc:
                problems.append(f"model version {n}: {exc}")
    return problems


def _audit(snap: reading.Snapshot, load_models: bool, anchors: list[tuple[int, str]],
           certs: list[tuple[str, dict]]) -> AuditReport:
    conn, reg = snap.conn, snap.reg
    entries = ledger.entries(conn)
    problems = list(snap.problems) + _check_anchors(conn, anchors)
    if load_models:
        problems += _load_problems(reg, replay.expected_tables(entries))
    for name, cert in certs:
        problems += certificates.differences(reg, conn, cert, name)
    warnings = list(snap.warnings)
    for e in entries:
        steps = e["body"].get("steps") or {} if isinstance(e["body"], dict) else {}
        odd = [v for v in steps.values() if v not in REAL_STEPS]
        if e["kind"] == "attempt" and e["body"].get("passed") and odd:
            warnings.append(f"attempt {e['body'].get('attempt')} of request "
                            f"{e['request_id']} (ledger entry {e['seq']}) was promoted "
                            f"using non-standard steps {', '.join(odd)}")
    warnings += residue.audit_notes(reg, entries)  # interrupted purges, unknown files
    counts = {k: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for k, t in
              (("versions", "versions"), ("samples", "samples"))}
    forgotten = conn.execute("SELECT COUNT(*) FROM samples WHERE forgotten_in IS NOT NULL"
                             ).fetchone()[0]
    return AuditReport(ok=not problems, problems=problems, warnings=warnings, checked={
        "ledger_entries": len(entries), **counts, "forgotten": forgotten,
        "head": ledger.head(conn)[1], "anchors": len(anchors), "certificates": len(certs),
        "purged_by_design": residue.purged_count(entries)})

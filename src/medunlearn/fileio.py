"""Atomic file writing and output folders that never hold half a run.

Every artefact is written to a temporary file in the destination folder, flushed to disk and
renamed into place, so a reader sees either the old file or the complete new one. Whole output
folders are built in a hidden staging folder beside the destination and renamed into place when
the run succeeds; a failed or interrupted run leaves nothing at the destination.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medunlearn.errors import OutputError, OutputExistsError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _cannot_write(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"Cannot write {path}: {exc.strerror or exc}. Choose an output path in "
                       "a folder you can write to (and that is not an existing file where a "
                       "folder is expected, or the reverse).")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, busy) -> Iterator[Any]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created with its folder if needed) without
    waiting; raise ``busy()`` when another process holds it. The open file is yielded. The
    operating system releases the lock when the process dies, even on kill -9."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise busy() from None
        yield fh
    finally:
        fh.close()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename).

    The file gets the usual permissions of a new file (``0666`` minus the umask), so reports and
    certificates meant to be handed out are readable like any other file the user writes.

    Raises:
        OutputError: the folder cannot be created or written, or ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"Cannot write the file {path}: it is a folder. Give a file name, "
                          f"e.g. {path / 'out'}{path.suffix or ''}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy values, paths and tuples into plain JSON types.

    Non-finite floats become ``None`` so that the output is strict JSON.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v) for v in items]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return to_jsonable(obj.item())  # 0-d torch tensors
    return obj


def dumps_json(obj: Any) -> str:
    """Serialise ``obj`` as indented, strict JSON."""
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, dumps_json(obj))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def fingerprint(obj: Any) -> str:
    """A short stable SHA-256 fingerprint of a JSON-able object (used to compare configs)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header written with sorted keys.

    The writer serialises the header (tensor table and ``__metadata__``) from a hash map, so its
    key order, and with it the file's bytes, can change from one call to the next. A
    safetensors file is an 8-byte little-endian header length, the header (JSON, padded with
    spaces to a multiple of 8 bytes) and the tensor bytes, which the header addresses relative
    to their own start; rewriting the header leaves them valid.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def folder_is_empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove the hidden ``.NAME.staging-PID-*`` / ``.NAME.replaced-PID-*`` folders that a
    killed run (``kill -9``, power loss) left beside ``out``; folders of live processes stay.

    Returns:
        The folders removed.
    """
    removed = []
    # a replaced folder is the only copy of the old output if the run died before the new one
    # was renamed into place: it is kept then
    for kind in ("staging", "replaced") if out.exists() else ("staging",):
        for p in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
            pid = p.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if p.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, *, overwrite: bool = False,
                  what: str = "run") -> Iterator[Path]:
    """Yield a private staging folder that replaces ``out`` only if the block succeeds.

    Args:
        out: The final output folder.
        overwrite: Replace an existing non-empty ``out``. Without it a non-empty ``out`` is an
            error, so that one run never silently replaces another.
        what: Noun used in error messages ("training run", "unlearning run", ...).

    Raises:
        OutputExistsError: ``out`` is a file, or a non-empty folder and ``overwrite`` is false.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(
            f"The output path {out} is a file, not a folder. Choose another --out path."
        )
    if not folder_is_empty(out) and not overwrite:
        raise OutputExistsError(
            f"The output folder {out} already holds files from another {what}. "
            "Choose a new --out folder, or pass --overwrite to replace its contents."
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out)
        stage = out.parent / f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        stage.mkdir()
    except OSError as exc:
        raise _cannot_write(out, exc) from None
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        trash = out.parent / f".{out.name}.replaced-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(out, trash)
        os.replace(stage, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(stage, out)
    _fsync_dir(out.parent)


# -- index CSVs (index,sha256,label[,...]): run folders, grids and the registry ----------------
def write_index_rows(path: str | os.PathLike, header: Sequence[str],
                     rows: Iterable[Sequence]) -> Path:
    """Write an index CSV atomically: ``header`` (``index,sha256,label`` first, extra columns
    after them), then one row per image (``None`` as an empty cell). The one writer of this
    format."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(header))
    w.writerows(["" if v is None else v for v in r] for r in rows)
    return atomic_write_text(path, buf.getvalue())


def read_index_rows(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """``(header, rows)`` of an index CSV, each row a ``{column: text}`` dict. The one reader of
    this format; callers check the columns they need and word their own errors (or use
    :func:`read_indices` / :func:`read_checked_indices`).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not UTF-8 text (``UnicodeDecodeError``).
        csv.Error: it is not CSV.
    """
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows



__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "canonical_safetensors",
           "dumps_json", "exclusive_lock", "fingerprint", "folder_is_empty", "read_index_rows",
           "read_json", "remove_stale_staging", "sha256_file", "staged_output", "to_jsonable",
           "write_index_rows"]

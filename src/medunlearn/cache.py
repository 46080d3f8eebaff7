"""Work reused within one job: loaded datasets and per-image penultimate features.

A deletion request loads the same data twice (to unlearn, then to verify) and runs the active
model over the same validation, test and retain images at every request. Inside a
:func:`session` both are computed once:

* datasets are kept by their data record (the record holds the file hashes, so a changed file
  is a different key);
* penultimate features are kept per image, by the digest of the weights that compute them
  (:func:`backbone_digest`: every tensor of the model except the linear head), the device, and
  the SHA-256 of the image as held in memory (``Split.pixel_hashes``: pixels and shape, so the
  same file preprocessed differently is a different key). Logits are the head applied to those
  features, as in :func:`medunlearn.loop.infer`. Identical bytes through identical weights give
  identical features, so a hit is the value the network would compute (up to the last bits,
  which the batch composition can move); and a model whose unlearning changed only the head (the
  registry's Newton step) reuses the features of the model it came from.

A session may be backed by a folder (the registry's ``cache/``): :func:`save_features` writes
one table there as ``<digest>-<device>.npz`` (no pickle) and the next session reads it back, so
the active version's features survive from one request to the next. A table is read back only
when the caller vouches for its SHA-256 (``Session.trusted``: the registry records each table's
hash in its ledger) and it is well formed; a table that was changed, damaged, of the wrong width
or dtype, or not finite is ignored and recomputed, never trusted. Such a folder is derived data:
deleting it only costs time.

Without a session (``cache=None``) nothing is cached and every call computes afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medunlearn.fileio import atomic_write_bytes


@dataclass
class FeatureTable:
    """Penultimate features of one backbone on one device, per image SHA-256."""

    rows: dict[str, int] = field(default_factory=dict)
    features: list[np.ndarray] = field(default_factory=list)
    from_disk: bool = False  # read from a session's folder (not computed in this job)

    def add(self, hashes: list[str], features: np.ndarray) -> None:
        for h, fe in zip(hashes, features, strict=True):
            if h not in self.rows:
                self.rows[h] = len(self.features)
                self.features.append(np.asarray(fe))

    def get(self, hashes: list[str]) -> np.ndarray:
        return np.stack([self.features[self.rows[h]] for h in hashes])

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Session:
    """What one job has computed so far (see the module docstring).

    ``directory``: a folder of saved tables (``<key>.npz``); a table there is read only when
    ``trusted`` maps its file name to the file's SHA-256 (what the caller's records vouch for:
    the registry's ledger), and only when it is well formed (64-hex image hashes, once each;
    finite float32 features of the model's width). Anything else is ignored and recomputed, and
    named in ``rejected``. ``loaded`` maps each table read from the folder to its SHA-256.
    """

    directory: Path | None = None
    trusted: Mapping[str, str] = field(default_factory=dict)
    datasets: dict[str, object] = field(default_factory=dict)
    features: dict[str, FeatureTable] = field(default_factory=dict)
    hits: int = 0  # images served from the cache
    misses: int = 0  # images computed
    loaded: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256 of tables read
    rejected: dict[str, str] = field(default_factory=dict)  # file name -> why it was not used
    disk_hits: int = 0  # images served from a table read from the folder

    def table(self, key: str, width: int | None = None) -> FeatureTable:
        """The feature table ``key`` (read from the folder on first use when it is trusted and
        well formed; ``width``: the model's feature width, when known)."""
        t = self.features.get(key)
        if t is None:
            t = self._read(key, width) or FeatureTable()
            self.features[key] = t
        return t

    def _read(self, key: str, width: int | None) -> FeatureTable | None:
        if self.directory is None:
            return None
        name = f"{key}.npz"
        path = self.directory / name
        if not path.exists():
            return None
        table, why = _read_table(path, self.trusted.get(name), width)
        if table is None:
            self.rejected[name] = why
            return None
        self.loaded[name] = self.trusted[name]
        table.from_disk = True
        return table


def backbone_digest(model, head) -> str:
    """SHA-256 of the tensors that compute a model's penultimate features: every parameter and
    buffer (names, dtypes, shapes, bytes, sorted by name) except those of its linear ``head``
    (the module ``loop.model_parts`` returns)."""
    import torch

    skip = {id(p) for p in head.parameters()} | {id(b) for b in head.buffers()}
    named = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]
             if id(t) not in skip]
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda nt: nt[0]):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def feature_key(model, device: str, head) -> str:
    """The key of a model's feature table: backbone digest and device type."""
    safe = "".join(c if c.isalnum() else "-" for c in device)
    return f"{backbone_digest(model, head)}-{safe}"


def dataset_key(record: Mapping, seed: int, overrides: Mapping) -> str:
    return json.dumps({"record": record, "seed": seed, "overrides": overrides}, sort_keys=True,
                      default=str)


def save_features(session: Session, key: str, *, drop: set[str] | frozenset = frozenset()
                  ) -> tuple[Path, str, int] | None:
    """Write the session's table ``key`` to its folder as ``<key>.npz``, without the rows of the
    image hashes in ``drop``.

    Returns:
        ``(path, SHA-256 of the file, rows)``, or None when there is nothing to write.
    """
    if session.directory is None or key not in session.features:
        return None
    t = session.features[key]
    hashes = sorted(h for h in t.rows if h not in drop)
    if not hashes:
        return None
    import io

    buf = io.BytesIO()
    np.savez(buf, hashes=np.array(hashes, dtype="U64"),
             features=t.get(hashes).astype(np.float32, copy=False))
    data = buf.getvalue()
    path = session.directory / f"{key}.npz"
    atomic_write_bytes(path, data)
    return path, hashlib.sha256(data).hexdigest(), len(hashes)


def prune(directory: str | os.PathLike, keep: set[str]) -> list[Path]:
    """Delete the tables (``*.npz`` plain files) in ``directory`` whose name is not in
    ``keep``; returns them. Symlinks and anything else are left alone."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir() or directory.is_symlink():
        return removed
    for f in directory.glob("*.npz"):
        if f.name not in keep and f.is_file() and not f.is_symlink():
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


_HEX = frozenset("0123456789abcdef")


def _read_table(path: Path, sha256: str | None, width: int | None
                ) -> tuple[FeatureTable | None, str]:
    """``(table, "")`` when ``path`` is a plain file with SHA-256 ``sha256`` and a well-formed
    table; else ``(None, why)``."""
    if sha256 is None:
        return None, "not vouched for"
    try:
        if not path.is_file() or path.is_symlink():
            return None, "not a plain file"
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            return None, "its SHA-256 differs from the one vouched for"
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            hashes, features = z["hashes"], z["features"]
    except Exception as exc:  # derived data: a bad file only costs the recomputation
        return None, f"unreadable ({type(exc).__name__})"
    names = [str(h) for h in hashes.reshape(-1)]
    if features.dtype != np.float32 or features.ndim != 2 or len(names) != len(features):
        return None, f"features of dtype {features.dtype} and shape {features.shape}"
    if width is not None and features.shape[1] != width:
        return None, f"features of width {features.shape[1]}, not {width}"
    if not np.isfinite(features).all():
        return None, "features that are not finite"
    if len(set(names)) != len(names) or any(len(h) != 64 or set(h) - _HEX for h in names):
        return None, "image hashes that are not 64 distinct hex digits"
    t = FeatureTable()
    t.add(names, features)
    return t, ""


__all__ = ["FeatureTable", "Session", "backbone_digest", "dataset_key", "feature_key", "prune",
           "save_features"]

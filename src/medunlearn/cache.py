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
the active version's features survive from one request to the next. Such a folder is derived
data: deleting it only costs time, and a file that does not load or does not match is ignored.

Outside a session nothing is cached and every call computes afresh.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medunlearn.io import atomic_write_bytes


@dataclass
class FeatureTable:
    """Penultimate features of one backbone on one device, per image SHA-256."""

    rows: dict[str, int] = field(default_factory=dict)
    features: list[np.ndarray] = field(default_factory=list)

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
    """What one job has computed so far (see the module docstring)."""

    directory: Path | None = None
    datasets: dict[str, object] = field(default_factory=dict)
    features: dict[str, FeatureTable] = field(default_factory=dict)
    hits: int = 0  # images served from the cache
    misses: int = 0  # images computed

    def table(self, key: str) -> FeatureTable:
        if key not in self.features:
            self.features[key] = _read_table(self.directory, key) or FeatureTable()
        return self.features[key]


_CURRENT: contextvars.ContextVar[Session | None] = contextvars.ContextVar("medunlearn_cache",
                                                                          default=None)


@contextlib.contextmanager
def session(directory: str | os.PathLike | None = None) -> Iterator[Session]:
    """Cache datasets and model outputs until the block ends (nested: the outer one is kept)."""
    outer = _CURRENT.get()
    if outer is not None:
        yield outer
        return
    s = Session(Path(directory) if directory is not None else None)
    token = _CURRENT.set(s)
    try:
        yield s
    finally:
        _CURRENT.reset(token)


def current() -> Session | None:
    """The active session, or None."""
    return _CURRENT.get()


def backbone_digest(model, head=None) -> str:
    """SHA-256 of the tensors that compute a model's penultimate features: every parameter and
    buffer (names, dtypes, shapes, bytes, sorted by name) except those of its linear head
    (``head``: that module when the caller has it, else found by ``loop.model_parts``)."""
    import torch

    if head is None:
        from medunlearn.loop import model_parts

        _, head = model_parts(model)
    skip = {id(p) for p in head.parameters()} | {id(b) for b in head.buffers()}
    named = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]
             if id(t) not in skip]
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda nt: nt[0]):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def feature_key(model, device: str, head=None) -> str:
    """The key of a model's feature table: backbone digest and device type."""
    safe = "".join(c if c.isalnum() else "-" for c in device)
    return f"{backbone_digest(model, head)}-{safe}"


def dataset_key(record: Mapping, seed: int, overrides: Mapping) -> str:
    return json.dumps({"record": record, "seed": seed, "overrides": overrides}, sort_keys=True,
                      default=str)


def save_features(key: str) -> Path | None:
    """Write the current session's table ``key`` to its folder (None: nothing to write)."""
    s = current()
    if s is None or s.directory is None or key not in s.features or not len(s.features[key]):
        return None
    t = s.features[key]
    hashes = sorted(t.rows)
    import io

    buf = io.BytesIO()
    np.savez(buf, hashes=np.array(hashes, dtype="U64"), features=t.get(hashes))
    path = s.directory / f"{key}.npz"
    s.directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def prune(directory: str | os.PathLike, keep: set[str]) -> None:
    """Delete the tables in ``directory`` whose weights digest is not in ``keep``."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for f in directory.glob("*.npz"):
        if f.name.split("-", 1)[0] not in keep:
            f.unlink(missing_ok=True)


def _read_table(directory: Path | None, key: str) -> FeatureTable | None:
    if directory is None:
        return None
    path = directory / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            hashes, features = z["hashes"], z["features"]
        if len(hashes) != len(features) or features.ndim != 2:
            return None
    except Exception:  # derived data: a bad file only costs the recomputation
        return None
    t = FeatureTable()
    t.add([str(h) for h in hashes], features)
    return t


__all__ = ["FeatureTable", "Session", "backbone_digest", "current", "dataset_key",
           "feature_key", "prune", "save_features", "session"]

"""On-disk cache of decoded, resized images, keyed by the source files' SHA-256 and the options.

An entry is one ``.npz`` file (images as (N, C, H, W) uint8 plus the DICOM tags read with them)
under ``<cache>/images/``, where ``<cache>`` is the ``cache_dir`` option, else
``$MEDUNLEARN_CACHE_DIR``, else ``~/.cache/medunlearn``. Its name is a hash of every source
file's SHA-256 (in order) and the decoding options, so a changed file is never served from the
cache. Entries are written atomically (temp file + rename): an interrupted load leaves none
half-written. A damaged entry is ignored and rewritten. Delete the folder to reclaim space.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from medunlearn.data.files import cache_dir as default_cache_dir
from medunlearn.fileio import atomic_write_bytes

VERSION = 1


def cache_root(cache_dir: str | None) -> Path:
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "images"


def cache_key(hashes: list[str], **options) -> str:
    text = json.dumps({"version": VERSION, "hashes": hashes, **options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load(cache_dir: str | None, key: str) -> tuple[np.ndarray, list[dict]] | None:
    """The cached ``(images, tags)`` of ``key``, or None."""
    path = cache_root(cache_dir) / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            tags = json.loads(bytes(z["tags"]).decode())
        if images.dtype != np.uint8 or images.ndim != 4 or len(tags) != len(images):
            return None
        return images, tags
    except (OSError, ValueError, KeyError):
        return None


def save(cache_dir: str | None, key: str, images: np.ndarray, tags: list[dict]) -> Path | None:
    """Store an entry atomically; a cache that cannot be written is skipped (returns None)."""
    buf = io.BytesIO()
    np.savez(buf, images=images,
             tags=np.frombuffer(json.dumps(tags).encode(), dtype=np.uint8))
    try:
        return atomic_write_bytes(cache_root(cache_dir) / f"{key}.npz", buf.getvalue())
    except OSError:
        return None


__all__ = ["cache_key", "cache_root", "load", "save"]

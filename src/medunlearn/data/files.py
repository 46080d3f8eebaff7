"""Finding, verifying and reading MedMNIST ``.npz`` files.

Root folder, in order: an explicit ``data_root`` (``--data-root``), the ``MEDMNIST_ROOT``
environment variable, medmnist's default (``~/.medmnist``). A file that is not there is downloaded
through the ``medmnist`` package when downloading is allowed and a network exists; otherwise the
error names the file, the folder searched and the ways to fix it.

Every file's MD5 is compared with the value in ``medmnist.INFO``. Hashing a large file on every
run is wasteful, so a verified digest is cached (keyed by the file's path, size and modification
time) in ``$MEDUNLEARN_CACHE_DIR`` or ``~/.cache/medunlearn``; an edited file has a new
modification time and is hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medunlearn.data.info import DatasetInfo, default_root
from medunlearn.errors import ChecksumError, DataError
from medunlearn.fileio import atomic_write_json

ROOT_ENV = "MEDMNIST_ROOT"
CACHE_ENV = "MEDUNLEARN_CACHE_DIR"


def resolve_root(data_root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Return the data folder and a phrase saying where it came from."""
    if data_root:
        return Path(data_root).expanduser(), "--data-root"
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser(), f"the {ROOT_ENV} environment variable"
    return Path(default_root()).expanduser(), "medmnist's default root"


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medunlearn"


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _cached_md5(path: Path) -> str:
    """MD5 of ``path``, reusing a cached digest while size and mtime are unchanged."""
    st = path.stat()
    key = str(path.resolve())
    cache_file = cache_dir() / "md5-cache.json"
    cache: dict = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(cache_file.read_text())
    entry = cache.get(key)
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry["md5"]
    digest = md5_file(path)
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": digest}
    with contextlib.suppress(OSError):  # a read-only home must not stop a run
        atomic_write_json(cache_file, cache)
    return digest


def check_md5(path: Path, expected: str | None) -> str:
    """Check ``path`` against ``expected``; return the file's MD5.

    Raises:
        ChecksumError: the digests differ (the file is corrupt, truncated or a different version).
    """
    digest = _cached_md5(path)
    if expected and digest != expected:
        raise ChecksumError(
            f"{path} has MD5 {digest}, but medmnist publishes {expected} for this file: it is "
            "corrupt, truncated or a different version. Delete it and let medunlearn download it "
            "again (or copy a good copy there). For a file you made yourself in the same format, "
            "pass --no-verify (verify_md5=False)."
        )
    return digest


def _download(info: DatasetInfo, size: int, root: Path) -> None:
    import medmnist

    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, info.python_class)
    kwargs = {"split": "train", "download": True, "root": str(root)}
    if size != 28:
        kwargs["size"] = size
    cls(**kwargs)


def check_root(root: Path, origin: str) -> None:
    """Refuse a data folder named by the user (``--data-root`` or the environment) that does not
    exist or is a file: medunlearn never creates a data folder where a typo points.

    Raises:
        DataError: naming the folder and the fix.
    """
    if origin.startswith("medmnist"):
        return  # medmnist's own default folder (~/.medmnist) may be created by its download
    if root.is_dir():
        return
    what = "is a file, not a folder" if root.exists() else "does not exist"
    raise DataError(f"The data folder {root} (from {origin}) {what}. Point --data-root (or "
                    f"{ROOT_ENV}) at the folder that holds the dataset's files; medunlearn "
                    "never creates a data folder.")


def locate(info: DatasetInfo, size: int, data_root: str | os.PathLike | None = None,
           *, download: bool = True) -> Path:
    """Return the path of a dataset file, downloading it if allowed.

    Raises:
        DataError: the size does not exist for this dataset, or the file is missing and could not
            be downloaded.
    """
    if size not in info.md5:
        raise DataError(
            f"{info.flag} has no {size}x{size} version; available sizes: "
            f"{', '.join(map(str, info.sizes))}. Pass one of them with --size."
        )
    root, origin = resolve_root(data_root)
    check_root(root, origin)
    path = root / info.file_name(size)
    if path.is_file():
        return path
    reason = "downloading is switched off (--no-download)"
    if download:
        try:
            _download(info, size, root)
        except Exception as exc:  # network errors come in many types
            reason = f"downloading it failed ({type(exc).__name__}: {exc})"
        else:
            if path.is_file():
                return path
            reason = "the download finished without producing the file"
    raise DataError(
        f"Dataset file {info.file_name(size)} was not found. Searched: {root} (from {origin}); "
        f"{reason}. Fix: point --data-root or the {ROOT_ENV} environment variable at a folder "
        f"that holds {info.file_name(size)}, or run once on a machine with internet so that "
        f"medmnist can download it from {info.urls.get(size)}."
    )


@dataclass(frozen=True)
class RawSplit:
    images: np.ndarray  # (N, H, W) or (N, H, W, C) uint8, exactly as stored
    labels: np.ndarray  # (N, L) integer labels as stored (L = 1 except multi-label)


def read_npz(path: Path, info: DatasetInfo, size: int) -> dict[str, RawSplit]:
    """Read and validate the three splits of a MedMNIST file.

    Raises:
        DataError: the file is not a readable npz, lacks a split, or has the wrong shapes.
    """
    fix = "Delete the file and download it again (or restore it from a good copy)."
    splits: dict[str, RawSplit] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for split in ("train", "val", "test"):
                for key in (f"{split}_images", f"{split}_labels"):
                    if key not in npz.files:
                        raise DataError(
                            f"{path} has no array {key!r} (it holds {sorted(npz.files)}), so it is "
                            f"not a MedMNIST {info.flag} file. {fix}"
                        )
                splits[split] = RawSplit(np.asarray(npz[f"{split}_images"]),
                                         np.asarray(npz[f"{split}_labels"]))
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise DataError(
            f"{path} cannot be read as an npz archive ({type(exc).__name__}: {exc}); it is "
            f"probably truncated or corrupt. {fix}"
        ) from exc

    for name, raw in splits.items():
        img, lab = raw.images, raw.labels
        expected_ndim = 3 if info.n_channels == 1 else 4
        bad = (
            img.dtype != np.uint8
            or img.ndim != expected_ndim
            or img.shape[1:3] != (size, size)
            or (expected_ndim == 4 and img.shape[3] != info.n_channels)
        )
        if bad:
            want = (("N", size, size) if info.n_channels == 1
                    else ("N", size, size, info.n_channels))
            raise DataError(
                f"{path}: {name}_images has shape {img.shape} and dtype {img.dtype}, expected "
                f"uint8 of shape {want} for {info.flag} at size {size}. {fix}"
            )
        if lab.ndim == 1:
            lab = lab[:, None]
        if lab.ndim != 2 or lab.shape[0] != img.shape[0]:
            raise DataError(
                f"{path}: {name}_labels has shape {raw.labels.shape} but there are "
                f"{img.shape[0]} images. {fix}"
            )
        if len(img) == 0:
            raise DataError(f"{path}: the {name} split is empty. {fix}")
        n_cols = info.num_classes if info.multilabel else 1
        if lab.shape[1] != n_cols:
            raise DataError(
                f"{path}: {name}_labels has {lab.shape[1]} columns, expected {n_cols}. {fix}"
            )
        if not np.issubdtype(lab.dtype, np.integer) and not np.array_equal(lab, np.floor(lab)):
            raise DataError(
                f"{path}: {name}_labels holds fractional values; labels must be whole class "
                f"numbers. {fix}"
            )
        hi = 1 if info.multilabel else info.num_classes - 1
        if lab.min() < 0 or lab.max() > hi:
            raise DataError(
                f"{path}: {name}_labels holds values outside 0..{hi} for {info.flag}. {fix}"
            )
        splits[name] = RawSplit(img, lab.astype(np.int64))
    return splits

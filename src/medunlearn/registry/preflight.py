"""Checks of a registry command's options and environment, made before anything is written.

A refused option must leave the registry byte-identical, and an environment problem (a seed out
of range, a data folder that is missing, a file, or holds a corrupt file) must never be recorded
as a failed request. :func:`check_forget_options` runs first in ``process_request`` (``forget``,
``registry consolidate``); :func:`check_init_options` runs before ``registry init`` copies
anything. Both only read.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from medunlearn.config import check_seed
from medunlearn.errors import ConfigError, DataError
from medunlearn.registry.errors import RegistryError


def _check_folder(data_root: str | os.PathLike, option: str = "--data-root") -> Path:
    """``data_root`` as a Path, refused unless it is an existing folder (never created)."""
    root = Path(data_root).expanduser()
    if root.is_dir():
        return root
    what = "is a file, not a folder" if root.exists() else "does not exist"
    raise DataError(f"{option} {root} {what}. Point it at the folder that holds the model's "
                    "data files (medunlearn never creates a data folder); leave it out to use "
                    "the folder recorded when the model was registered. Nothing was changed.")


def _registered_data(reg: Path) -> dict | None:
    """The ``data`` record of the registered model (version 1's config.json), or None when it
    cannot be read here (the workflow then reports what is wrong with the registry)."""
    try:
        record = json.loads((reg / "versions" / "1" / "config.json").read_text("utf-8"))["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) else None


def _check_npz(path: Path) -> None:
    """Refuse a MedMNIST file that is not a readable npz archive with the three splits."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            # CRCs of every member (skipped for files too large to read twice quickly)
            broken = zf.testzip() if path.stat().st_size < 256 << 20 else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DataError(f"The data file {path} cannot be read as an npz archive ({exc}); it is "
                        "truncated or corrupt. Restore it from a good copy (or delete it so that "
                        "it is downloaded again), then rerun. Nothing was changed.") from None
    want = {f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("images", "labels")}
    if broken is not None or not want <= names:
        what = f"its member {broken} is corrupt" if broken else "it lacks the split arrays"
        raise DataError(f"The data file {path} is damaged: {what}. Restore it from a good copy "
                        "(or delete it so that it is downloaded again), then rerun. Nothing was "
                        "changed.")


def check_forget_options(reg: str | os.PathLike, *, seed: int | None = None,
                         data_root: str | os.PathLike | None = None) -> None:
    """Refuse ``forget``/``consolidate`` options that would fail the request after it had been
    recorded: a seed out of range, a data folder that does not exist or is a file, and (for a
    MedMNIST model) a corrupt data file in it.

    Raises:
        ConfigError: the seed.
        DataError: the data folder or its file.
    """
    check_seed(seed)
    if not data_root:
        return
    root = _check_folder(data_root)
    record = _registered_data(Path(reg))
    if record is None:
        return
    source = str(record.get("source", "medmnist"))
    if source == "manifest" and record.get("manifest"):
        csv = root / Path(str(record["manifest"])).name
        if not csv.is_file():
            raise DataError(f"--data-root {root} does not hold the model's manifest "
                            f"{csv.name}. Point it at the folder with that CSV and its images. "
                            "Nothing was changed.")
    elif source == "medmnist":
        from medunlearn.data.info import get_info

        try:
            info = get_info(str(record.get("dataset")))
            path = root / info.file_name(int(record.get("size") or 28))
        except (ConfigError, DataError, KeyError, ValueError, TypeError):
            return  # an odd record: loading the data reports it
        if path.is_file():
            _check_npz(path)


def check_init_options(model_dir: str | os.PathLike, *, methods: str | None = None,
                       data_root: str | os.PathLike | None = None) -> list[str] | None:
    """Check ``registry init``'s options and the run folder's manifest against its config; return
    the method chain (None: the recommended one).

    Raises:
        ConfigError: a method list that names no method.
        DataError: a data folder that does not exist or is a file.
        RegistryError: a manifest.csv that does not match the model's training split (no rows,
            fewer or more rows than config.json records, labels outside the model's classes).
    """
    chain = None
    if methods is not None:
        chain = [m.strip() for m in methods.split(",") if m.strip()]
        if not chain:
            raise ConfigError(f"--methods {methods[:40]!r} names no method. Give a chain such as "
                              "salun-cra,retrain, or leave --methods out for the recommended "
                              "chain.")
    if data_root:
        _check_folder(data_root)
    model_dir = Path(model_dir)
    manifest = model_dir / "manifest.csv"
    try:
        config = json.loads((model_dir / "config.json").read_text("utf-8"))
        described = config.get("dataset") or {}
        n_train = described.get("n_samples", {}).get("train")
        n_classes = (described.get("view") or {}).get("num_classes")
    except (OSError, ValueError, AttributeError, TypeError):
        return chain  # init reports an unreadable run folder in its own words
    if not manifest.is_file():
        return chain
    from medunlearn.registry.versions import read_manifest

    rows = read_manifest(manifest)
    fix = ("Restore manifest.csv from the 'medunlearn train' output folder, or delete it to have "
           "the hashes computed from the training data. Nothing was changed.")
    if not rows:
        raise RegistryError(f"{manifest} lists no training images (a header only). {fix}")
    if isinstance(n_train, int) and len(rows) != n_train:
        raise RegistryError(f"{manifest} lists {len(rows)} training images, but config.json "
                            f"records {n_train} (the file is cut short or was replaced). {fix}")
    if isinstance(n_classes, int):
        bad = [(i, y) for i, _, y in rows if not 0 <= y < n_classes]
        if bad:
            i, y = bad[0]
            raise RegistryError(f"{manifest}: {len(bad)} row(s) have a label outside the "
                                f"model's {n_classes} classes (0..{n_classes - 1}), e.g. index "
                                f"{i} with label {y}. {fix}")
    return chain


__all__ = ["check_forget_options", "check_init_options"]

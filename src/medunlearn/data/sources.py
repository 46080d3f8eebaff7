"""Data sources: loading what a :class:`~medunlearn.config.DataSource` describes, and how a
run folder's ``data`` record turns back into a :class:`Dataset`.

:func:`load_dataset` loads a ``DataSource`` (the one validated description of the data a user
asks for: a MedMNIST flag, or image files, with their options) with the loader registered for
its kind.

Every run folder stores the record of the data it was trained on (``Dataset.source``) as
``config.json`` ``data``; its ``source`` key names the loader (``medmnist`` when absent, as in
run folders written before other sources existed). A loader takes the record, the run's seed
and overrides such as ``data_root`` and returns the same samples in the same order.

Register a new source with :func:`register_source`; :func:`load_from_record` refuses an unknown
source by listing the known ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from medunlearn.config import DataConfig, DataSource
from medunlearn.data.dataset import LOCATION_KEYS, Dataset, from_record, load_medmnist
from medunlearn.errors import ConfigError, DataError

Loader = Callable[..., Dataset]

_LOADERS: dict[str, Loader] = {}
_SOURCE_LOADERS: dict[str, Callable[..., Dataset]] = {}

def register_source(name: str, loader: Loader, load: Callable[..., Dataset] | None = None
                    ) -> None:
    """Register ``loader(record, *, seed, **overrides) -> Dataset`` under ``name`` (how a run
    folder's record loads again) and, for a kind of :class:`DataSource`, ``load(source, *,
    seed) -> Dataset`` (how it loads the first time)."""
    if name in _LOADERS and _LOADERS[name] is not loader:
        raise ValueError(f"a data source named {name!r} is already registered")
    _LOADERS[name] = loader
    if load is not None:
        _SOURCE_LOADERS[name] = load


def load_dataset(source: DataSource | DataConfig | None = None, *, seed: int = 0,
                 **overrides) -> Dataset:
    """Load the data a :class:`DataSource` describes (or MedMNIST by a
    :class:`~medunlearn.config.DataConfig`) into memory.

    Args:
        source: What to load (None: MedMNIST defaults); keyword ``overrides`` replace its fields
            (``load_dataset(dataset="breastmnist", view="binary")``).
        seed: Seeds the ``train_limit``/``eval_limit`` subsets.

    Raises:
        DataError: unknown dataset, missing/corrupt/wrong-checksum file, bad view or files.
        ConfigError: invalid options.
    """
    if not isinstance(source, DataSource):
        return load_medmnist(source, seed=seed, **overrides)
    if overrides:
        source = dataclasses.replace(source, **overrides)
    _load_builtin()
    return _SOURCE_LOADERS[source.kind](source, seed=seed)


def dataset_name(record: Mapping) -> str:
    """The name by which a ``data`` record's dataset is shown (certificates, status): the
    MedMNIST flag, else the name given when loading (default: the CSV manifest's folder or the
    class folder's name), else the file's or folder's own name."""
    from pathlib import Path

    if not isinstance(record, Mapping):
        return ""
    for key in ("name", "dataset"):
        if str(record.get(key) or "").strip(" ."):
            return str(record[key])
    for key in ("manifest", "root"):
        if record.get(key):
            path = Path(str(record[key]))
            return (path.parent.name if key == "manifest" else path.name) or path.name
    return str(record.get("source", ""))


def source_names() -> list[str]:
    _load_builtin()
    return sorted(_LOADERS)


def source_of(record: Mapping) -> str:
    return str(record.get("source", "medmnist"))


def data_identity(record: Mapping) -> dict:
    """The part of a data record that decides which samples a model sees (not where they
    live): two runs are comparable only when these are equal."""
    out = {k: v for k, v in record.items() if k not in LOCATION_KEYS}
    out.setdefault("source", "medmnist")
    if out.get("positive_classes") is None and "positive_classes" in record:
        out["positive_classes"] = []
    return out


def load_from_record(record: Mapping, *, seed: int = 0, cache=None, **overrides) -> Dataset:
    """Load the dataset a ``data`` record describes.

    ``cache`` (a :class:`medunlearn.cache.Session`) keeps loaded datasets by their record (which
    holds the files' hashes), seed and overrides, so a job that loads the same data twice
    loads it once.

    Raises:
        DataError: an unknown source, or a source that cannot be loaded again (arrays).
    """
    _load_builtin()
    name = source_of(record)
    if name not in _LOADERS:
        raise DataError(f"Unknown data source {name!r} in the run's config.json; known sources: "
                        f"{', '.join(sorted(_LOADERS))}. The run was written by a newer "
                        "medunlearn or its config.json was edited.")
    session = cache
    if session is None:
        return _LOADERS[name](dict(record), seed=seed, **overrides)
    from medunlearn.cache import dataset_key

    key = dataset_key(record, seed, overrides)  # the record holds the files' hashes
    if key not in session.datasets:
        session.datasets[key] = _LOADERS[name](dict(record), seed=seed, **overrides)
    return session.datasets[key]


def validate_record(record) -> None:
    """Check that a ``data`` record names a known source and, for MedMNIST, valid options,
    without loading anything.

    Raises:
        DataError: not a mapping, an unknown source, or invalid MedMNIST options.
    """
    if not isinstance(record, Mapping) or not record:
        raise DataError("it has no 'data' section saying which data the model was trained on")
    _load_builtin()
    name = source_of(record)
    if name not in _LOADERS:
        raise DataError(f"its data source {name!r} is unknown (known: "
                        f"{', '.join(sorted(_LOADERS))})")
    if name == "medmnist":
        if not record.get("dataset"):
            raise DataError("its 'data' section names no dataset")
        try:
            from_record(DataConfig, record)
        except ConfigError as exc:
            raise DataError(str(exc)) from None


def _medmnist(record: dict, *, seed: int, **overrides) -> Dataset:
    return load_medmnist(from_record(DataConfig, record), seed=seed, **overrides)


def _medmnist_source(source: DataSource, *, seed: int) -> Dataset:
    return load_medmnist(source.medmnist(), seed=seed)


def _arrays(record: dict, *, seed: int, **overrides) -> Dataset:
    raise DataError(
        f"This run was trained on data held in memory ({record.get('name', 'arrays')!r}, built "
        "with medunlearn.data.from_arrays), which has no file to load again. Pass the same "
        "Dataset object in Python (medunlearn.unlearn(model, data, ...)), or build the data "
        "from files (a CSV manifest or a folder) so that run folders can reload it."
    )


_BUILTIN = False


def _load_builtin() -> None:
    global _BUILTIN
    if _BUILTIN:
        return
    _BUILTIN = True
    register_source("medmnist", _medmnist, _medmnist_source)
    register_source("arrays", _arrays)
    import importlib
    import importlib.util

    # file sources (CSV manifests, class folders, DICOM) register themselves on import
    if importlib.util.find_spec("medunlearn.data.manifest") is not None:
        importlib.import_module("medunlearn.data.manifest")


__all__ = ["DataSource", "data_identity", "dataset_name", "load_dataset", "load_from_record",
           "register_source", "source_names", "source_of", "validate_record"]

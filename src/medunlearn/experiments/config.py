"""Experiment study files: parse a YAML or TOML study into a grid (:mod:`.grid`).

A study file describes a grid. Example (``experiments/tiny.yaml``)::

    name: tiny
    datasets:
      - {dataset: breastmnist, view: binary}
    forget: ["random:0.2", 0.5]          # a bare number means random:<number>
    methods:
      - retrain
      - finetune
      - {name: salun, options: {epochs: 1}, label: salun-1ep}
    augment: [none, basic]               # or true / false (true = basic)
    seeds: [0, 1, 2]
    data: {train_limit: 120, eval_limit: 60}
    model: {width: 8}
    train: {epochs: 1}
    evaluation: {}                       # options passed to evaluate_run; forgetting_quality: N
                                         # adds the per-example check (N + N models per cell)
    gate: {}                             # tolerances passed to the safety gate

:func:`parse_experiment` validates every setting before anything runs (unknown keys, datasets,
methods and options are errors that list the valid ones); the grid expands into jobs in
:mod:`medunlearn.experiments.grid`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from medunlearn.config import DataConfig, DataSource, ModelConfig, TrainConfig, from_dict
from medunlearn.errors import ConfigError, MedUnlearnError
from medunlearn.experiments.grid import (
    FRACTION_KINDS,
    DatasetSpec,
    ExperimentConfig,
    MethodSpec,
    _frozen_items,
    forget_ratio,
)


class ExperimentConfigError(ConfigError):
    """A study (grid) file is missing, unreadable or holds invalid settings."""


TOP_LEVEL_KEYS = (
    "name", "description", "datasets", "forget", "methods", "augment", "seeds", "size", "data",
    "model", "train", "evaluation", "gate", "retain_budget", "data_root", "threads",
    "shards", "slices",  # sharded originals (medunlearn.sharding)
)
DATASET_KEYS = ("dataset", "view", "positive_classes", "size", "label", "options")
#: Loader options a study may give a CSV manifest or class folder (``datasets[i].options``).
FILE_OPTIONS = tuple(f.name for f in dataclasses.fields(DataSource)
                     if f.metadata.get("panel") == "files")
METHOD_KEYS = ("name", "options", "label")
#: DataConfig fields a study may set in its ``data`` section (the grid sets the others).
DATA_KEYS = ("train_limit", "eval_limit", "download", "verify_md5")
AUGMENT_POLICIES = ("none", "basic", "strong")


# -- parsing -----------------------------------------------------------------------------------
def _as_list(value: Any, where: str) -> list:
    if value is None:
        raise ExperimentConfigError(f"{where} may not be empty.")
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ExperimentConfigError(f"{where} is an empty list; give at least one value.")
    return list(items)


def _check_keys(d: dict, valid: tuple[str, ...], where: str) -> None:
    if not isinstance(d, dict):
        raise ExperimentConfigError(f"{where} must be a mapping, got {d!r}.")
    unknown = sorted(map(str, set(d) - set(valid)))
    if unknown:
        shown = ", ".join(repr(k) if len(k) <= 40 else f"{k[:40]!r}... ({len(k)} characters)"
                          for k in unknown[:5])  # a 1 MB key is not echoed whole
        raise ExperimentConfigError(
            f"Unknown key(s) {shown}{' ...' if len(unknown) > 5 else ''} in {where}; valid keys: "
            f"{', '.join(valid)}."
        )


def _parse_dataset(item: Any, size: int, i: int) -> DatasetSpec:
    from medunlearn.data import get_info, resolve_view

    where = f"datasets[{i}]"
    if isinstance(item, str):
        item = {"dataset": item}
    _check_keys(item, DATASET_KEYS, where)
    if "dataset" not in item:
        raise ExperimentConfigError(f"{where} needs a 'dataset' key (e.g. breastmnist).")
    from medunlearn.data.info import dataset_flags

    name = str(item["dataset"])
    if name.lower() not in dataset_flags() and ("/" in name or "." in name
                                                 or Path(name).exists()):
        return _parse_files_dataset(item, size, where)
    if "options" in item:
        raise ExperimentConfigError(f"{where}: 'options' are loader options of a CSV manifest "
                                    "or class folder; MedMNIST datasets take none.")
    try:
        info = get_info(item["dataset"])
        pos = item.get("positive_classes")
        if pos is not None:
            pos = tuple(int(c) for c in _as_list(pos, f"{where}.positive_classes"))
        view = resolve_view(info, str(item.get("view", "auto")), pos)
    except MedUnlearnError as exc:
        raise ExperimentConfigError(f"{where}: {exc}") from None
    ds_size = int(item.get("size", size))
    if ds_size not in info.sizes:
        raise ExperimentConfigError(
            f"{where}: {info.flag} has no {ds_size} px version; sizes: "
            f"{', '.join(map(str, info.sizes))}.")
    return DatasetSpec(dataset=info.flag, view=view.kind,
                       positive_classes=pos if pos is not None else None,
                       size=ds_size, label=str(item.get("label", "")))


def _parse_files_dataset(item: dict, size: int, where: str) -> DatasetSpec:
    """A CSV manifest or class folder in a study: its path must exist and its loader options
    must be known (checked before anything runs)."""
    path = Path(str(item["dataset"])).expanduser()
    if not path.exists():
        raise ExperimentConfigError(
            f"{where}: {path} does not exist. Give the path of a CSV manifest or a class folder "
            "(relative to the folder you run 'medunlearn experiment' from), or a MedMNIST flag.")
    if item.get("positive_classes") is not None or str(item.get("view", "auto")) not in (
            "auto", "binary"):
        raise ExperimentConfigError(f"{where}: image files use the binary clinical view; name "
                                    "the disease labels with options.positive_values.")
    options = item.get("options") or {}
    if not isinstance(options, dict):
        raise ExperimentConfigError(f"{where}.options must be a mapping of loader options.")
    _check_keys(options, FILE_OPTIONS, f"{where}.options")
    files = tuple(sorted((str(k), json.dumps(v)) for k, v in options.items()))
    return DatasetSpec(dataset=str(path), view="binary", size=int(item.get("size", size)),
                       label=str(item.get("label", "")), files=files)


def _parse_forget(item: Any, i: int) -> str:
    where = f"forget[{i}]"
    if isinstance(item, bool):
        raise ExperimentConfigError(f"{where} must be a spec such as random:0.2, got {item!r}.")
    if isinstance(item, (int, float)):
        item = f"random:{item:g}"
    if not isinstance(item, str) or not item.strip():
        raise ExperimentConfigError(f"{where} must be a spec such as random:0.2, got {item!r}.")
    spec = item.strip()
    from medunlearn.forget_set import KINDS

    kind = spec.split(":")[0]
    if kind not in KINDS:
        raise ExperimentConfigError(
            f"{where}: unknown forget selection {spec!r}; use one of "
            f"{', '.join(k + ':...' for k in KINDS)} (e.g. random:0.2).")
    ratio = forget_ratio(spec)
    if kind in FRACTION_KINDS:
        if ratio is None:
            raise ExperimentConfigError(f"{where}: {spec!r} needs a fraction, e.g. {kind}:0.2.")
        if not 0 < ratio < 1:
            raise ExperimentConfigError(
                f"{where}: the forget fraction must be between 0 and 1 (exclusive), got {ratio}.")
    return spec


def _method_registry() -> tuple[list[str], Any]:
    from medunlearn.methods import CANONICAL_ORDER, method_names

    names = list(method_names())
    return (names or list(CANONICAL_ORDER)), bool(names)


def _parse_method(item: Any, valid: list[str], check_options: bool, i: int) -> MethodSpec:
    where = f"methods[{i}]"
    if isinstance(item, str):
        item = {"name": item}
    _check_keys(item, METHOD_KEYS, where)
    name = item.get("name")
    if name not in valid:
        raise ExperimentConfigError(
            f"{where}: unknown unlearning method {name!r}; valid methods: {', '.join(valid)}.")
    options = item.get("options") or {}
    if not isinstance(options, dict):
        raise ExperimentConfigError(f"{where}.options must be a mapping, got {options!r}.")
    if check_options and options:
        from medunlearn.methods import get_method_class

        try:
            from medunlearn.methods.base import check_options

            check_options(from_dict(get_method_class(name).Config, options,
                                    where=f"{where}.options ({name})"), name)
        except MedUnlearnError as exc:
            raise ExperimentConfigError(str(exc)) from None
    return MethodSpec(name=name, options=_frozen_items(options), label=str(item.get("label", "")))


def _parse_augment(value: Any) -> tuple[str, ...]:
    out = []
    for v in _as_list(value, "augment"):
        if isinstance(v, bool):
            v = "basic" if v else "none"
        if v not in AUGMENT_POLICIES:
            raise ExperimentConfigError(
                f"augment: unknown policy {v!r}; use {', '.join(AUGMENT_POLICIES)} or "
                "true/false (true = basic).")
        out.append(v)
    return tuple(dict.fromkeys(out))


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExperimentConfigError(f"{key} must be a positive whole number, got {value!r}.")
    return value


def parse_experiment(raw: dict, *, source: str | None = None) -> ExperimentConfig:
    """Validate a study mapping and build an :class:`ExperimentConfig`.

    Raises:
        ExperimentConfigError: unknown keys, unknown datasets or methods (the valid ones are
            listed), malformed forget selections, bad training settings.
    """
    if not isinstance(raw, dict):
        raise ExperimentConfigError("A study file must hold a mapping of settings at top level.")
    _check_keys(raw, TOP_LEVEL_KEYS, "the study file")
    for required in ("datasets", "forget", "methods"):
        if required not in raw:
            raise ExperimentConfigError(f"The study file needs a {required!r} list.")
    size = _positive_int(raw.get("size", 28), "size")
    datasets = tuple(_parse_dataset(d, size, i)
                     for i, d in enumerate(_as_list(raw["datasets"], "datasets")))
    forget = tuple(dict.fromkeys(_parse_forget(f, i)
                                 for i, f in enumerate(_as_list(raw["forget"], "forget"))))
    valid, registered = _method_registry()
    methods = tuple(_parse_method(m, valid, registered, i)
                    for i, m in enumerate(_as_list(raw["methods"], "methods")))
    labels = [m.display for m in methods]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ExperimentConfigError(
            f"Methods listed twice: {', '.join(dup)}. Give each variant its own 'label'.")
    seeds = []
    for s in _as_list(raw.get("seeds", [0]), "seeds"):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ExperimentConfigError(f"seeds must be non-negative integers, got {s!r}.")
        seeds.append(s)
    data = raw.get("data") or {}
    _check_keys(data, DATA_KEYS, "data")
    try:
        from_dict(DataConfig, data, where="data")
        model = from_dict(ModelConfig, raw.get("model") or {}, where="model")
        train = from_dict(TrainConfig, raw.get("train") or {}, where="train")
        from medunlearn.training import validate_train_config

        validate_train_config(train)
        if model.width < 1:
            raise ExperimentConfigError(f"model.width must be at least 1, got {model.width}.")
        if isinstance(raw.get("gate"), dict) and raw["gate"]:
            from medunlearn.evaluation.gate import gate

            gate({}, raw["gate"])  # checks the tolerance names and values (no metrics needed)
    except MedUnlearnError as exc:
        raise ExperimentConfigError(str(exc)) from None
    for sec in ("evaluation", "gate"):
        if not isinstance(raw.get(sec) or {}, dict):
            raise ExperimentConfigError(f"{sec} must be a mapping of options.")
    n_fq = (raw.get("evaluation") or {}).get("forgetting_quality")
    if n_fq is not None:
        from medunlearn.evaluation.forgetting_quality import check_n

        if isinstance(n_fq, bool) or not isinstance(n_fq, int):
            raise ExperimentConfigError("evaluation.forgetting_quality must be the number of "
                                        f"models per side (e.g. 16), got {n_fq!r}.")
        try:
            check_n(n_fq)
        except MedUnlearnError as exc:
            raise ExperimentConfigError(f"evaluation.forgetting_quality: {exc}") from None
    budget = raw.get("retain_budget")
    threads = raw.get("threads")
    if budget is not None:
        _positive_int(budget, "retain_budget")
    if threads is not None:
        _positive_int(threads, "threads")
    shards, slices = raw.get("shards"), raw.get("slices")
    if shards is None and slices is not None:
        raise ExperimentConfigError("slices applies to sharded originals: add shards: S.")
    if shards is not None:
        from medunlearn.sharding import check_count

        try:
            shards = check_count(shards, "shards")
            slices = check_count(1 if slices is None else slices, "slices")
        except MedUnlearnError as exc:
            raise ExperimentConfigError(str(exc)) from None
    if raw.get("data_root") is not None and not isinstance(raw["data_root"], str):
        raise ExperimentConfigError(f"data_root must be a folder path, got {raw['data_root']!r}.")
    return ExperimentConfig(
        name=str(raw.get("name") or (Path(source).stem if source else "experiment")),
        description=str(raw.get("description") or ""),
        datasets=datasets, forget=forget, methods=methods,
        augment=_parse_augment(raw.get("augment", "basic")),
        seeds=tuple(dict.fromkeys(seeds)), data=dict(data), model=model, train=train,
        evaluation=dict(raw.get("evaluation") or {}), gate=dict(raw.get("gate") or {}),
        retain_budget=None if budget is None else int(budget),
        data_root=raw.get("data_root"), threads=None if threads is None else int(threads),
        shards=shards, slices=slices or 1, source=source,
    )


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate a study file (``.yaml``/``.yml`` or ``.toml``).

    Raises:
        ExperimentConfigError: the file is missing, cannot be parsed, or holds invalid settings.
    """
    path = Path(path)
    if not path.is_file():
        raise ExperimentConfigError(f"Study file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ExperimentConfigError(f"Study file {path} is not UTF-8 text; save it as UTF-8."
                                    ) from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        else:
            raise ExperimentConfigError(
                f"Study file {path} must end in .yaml, .yml or .toml, not {suffix or 'nothing'}.")
    except ExperimentConfigError:
        raise
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError
        raise ExperimentConfigError(f"Cannot parse {path}: {exc}") from None
    return parse_experiment(raw or {}, source=str(path))


__all__ = ["ExperimentConfig", "ExperimentConfigError", "forget_ratio", "load_experiment",
           "parse_experiment"]

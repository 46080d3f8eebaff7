"""Experiment grid configuration: parse a YAML or TOML study file into jobs.

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

The grid expands into three kinds of jobs:

* one :class:`OriginalJob` per (dataset, augmentation, seed): the trained model;
* one :class:`ReferenceJob` per original and forget selection: the model retrained without the
  forget set (the gold standard every method is compared with);
* one :class:`CellJob` per reference and method: unlearn, then evaluate.

Originals and references are shared by every method and cached under ``RESULTS/models``,
keyed by a fingerprint of everything that determines them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medunlearn.config import DataConfig, ModelConfig, TrainConfig, from_dict
from medunlearn.errors import ConfigError, MedUnlearnError
from medunlearn.io import fingerprint


class ExperimentConfigError(ConfigError):
    """A study (grid) file is missing, unreadable or holds invalid settings."""


TOP_LEVEL_KEYS = (
    "name", "description", "datasets", "forget", "methods", "augment", "seeds", "size", "data",
    "model", "train", "evaluation", "gate", "retain_budget", "data_root", "threads",
    "shards", "slices",  # sharded originals (medunlearn.sharding)
)
DATASET_KEYS = ("dataset", "view", "positive_classes", "size", "label", "options")
#: Loader options a study may give a CSV manifest or class folder (``datasets[i].options``).
FILE_OPTIONS = ("path_column", "label_column", "patient_column", "split_column",
                "metadata_columns", "positive_values", "negative_values", "channels", "resplit",
                "val_fraction", "test_fraction", "split_seed", "cache_dir")
METHOD_KEYS = ("name", "options", "label")
#: DataConfig fields a study may set in its ``data`` section (the grid sets the others).
DATA_KEYS = ("train_limit", "eval_limit", "download", "verify_md5")
FRACTION_KINDS = ("random", "positive", "negative", "random-patients")  # kind:F specs
AUGMENT_POLICIES = ("none", "basic", "strong")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset under one task view."""

    dataset: str  # a MedMNIST flag, or the path of a CSV manifest or class folder
    view: str = "auto"
    positive_classes: tuple[int, ...] | None = None
    size: int = 28
    label: str = ""  # short name in reports (default: "<dataset>-<view>")
    # loader options of a CSV manifest or class folder, as sorted (key, JSON value) pairs
    files: tuple[tuple[str, str], ...] | None = None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.files is not None:  # labels.csv -> its folder's name; a folder -> its name
            p = Path(self.dataset)
            return f"{p.parent.name if p.suffix else p.name}-{self.view}"
        return f"{self.dataset}-{self.view}"

    def file_options(self) -> dict:
        return {k: json.loads(v) for k, v in (self.files or ())}

    @property
    def defaults_flag(self) -> str:
        """The dataset name whose ``defaults/methods.toml`` sections apply: the MedMNIST flag,
        or the name the file loaders give (a manifest's folder, a class folder's own name)."""
        if self.files is None:
            return self.dataset
        p = Path(self.dataset)
        return p.parent.name if p.suffix else p.name


@dataclass(frozen=True)
class MethodSpec:
    """One unlearning method with its hyperparameters."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()  # sorted (key, value) pairs: hashable
    label: str = ""  # name in reports (default: the method name)

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def options_dict(self) -> dict:
        return {k: json.loads(v) for k, v in self.options}


@dataclass(frozen=True)
class OriginalJob:
    """Train the original model of one (dataset, augmentation, seed)."""

    key: str
    dataset: DatasetSpec
    augment: str
    seed: int
    data: DataConfig | None  # MedMNIST data (None for files)
    model: ModelConfig
    train: TrainConfig
    files: tuple[tuple[str, str], ...] | None = None  # load_files(path, **options) for files
    shards: int | None = None  # a sharded original: S shards (None: monolithic)
    slices: int = 1  # and R slices per shard

    @property
    def data_root(self) -> str | None:
        return self.data.data_root if self.data is not None else None

    def load_files(self):
        """The dataset of a CSV manifest or class folder (None for MedMNIST)."""
        if self.files is None:
            return None
        from medunlearn.data.manifest import load_files

        opts = {k: json.loads(v) for k, v in self.files}
        return load_files(opts.pop("path"), **opts, seed=self.seed)

    @property
    def slug(self) -> str:
        return f"{self.dataset.name}-aug_{self.augment}-s{self.seed}-{self.key}"

    @property
    def folder(self) -> str:
        return f"models/original/{self.slug}"


@dataclass(frozen=True)
class ReferenceJob:
    """Retrain from scratch without one forget selection (the reference every method targets)."""

    key: str
    original: OriginalJob
    forget: str
    retain_budget: int | None = None

    @property
    def seed(self) -> int:
        return self.original.seed

    @property
    def slug(self) -> str:
        return (f"{self.original.dataset.name}-aug_{self.original.augment}-"
                f"{_safe(self.forget)}-s{self.seed}-{self.key}")

    @property
    def folder(self) -> str:
        return f"models/reference/{self.slug}"


@dataclass(frozen=True)
class CellJob:
    """Unlearn one forget selection from one original with one method, then evaluate."""

    key: str  # the unique key of this cell and seed in the results table
    reference: ReferenceJob
    method: MethodSpec
    evaluation: tuple[tuple[str, Any], ...] = ()
    gate: tuple[tuple[str, Any], ...] = ()

    @property
    def original(self) -> OriginalJob:
        return self.reference.original

    @property
    def seed(self) -> int:
        return self.reference.seed

    @property
    def reuses_reference(self) -> bool:
        """``retrain`` without options *is* the reference run: no second retraining."""
        return self.method.name == "retrain" and not self.method.options

    @property
    def slug(self) -> str:
        o = self.original
        return (f"{o.dataset.name}-aug_{o.augment}-{_safe(self.reference.forget)}-"
                f"{_safe(self.method.display)}-s{self.seed}-{self.key}")

    @property
    def folder(self) -> str:
        return self.reference.folder if self.reuses_reference else f"runs/{self.slug}"

    @property
    def evaluation_options(self) -> dict:
        return {k: json.loads(v) for k, v in self.evaluation}

    @property
    def gate_tolerances(self) -> dict | None:
        return {k: json.loads(v) for k, v in self.gate} or None


@dataclass(frozen=True)
class ExperimentConfig:
    """A parsed study: the grid axes and the shared training settings."""

    name: str
    datasets: tuple[DatasetSpec, ...]
    forget: tuple[str, ...]
    methods: tuple[MethodSpec, ...]
    augment: tuple[str, ...] = ("basic",)
    seeds: tuple[int, ...] = (0,)
    data: dict = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: dict = field(default_factory=dict)
    gate: dict = field(default_factory=dict)
    retain_budget: int | None = None
    data_root: str | None = None
    threads: int | None = None
    shards: int | None = None  # train sharded originals (S shards, R slices; sharding.py)
    slices: int = 1
    description: str = ""
    source: str | None = None  # the file it was read from

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["methods"] = [{"name": m.name, "options": m.options_dict, "label": m.display}
                        for m in self.methods]
        return d

    # -- expansion ---------------------------------------------------------------------------
    def originals(self) -> list[OriginalJob]:
        """Every original model of the grid (seeds outermost, so seed 0 finishes first)."""
        out = []
        for seed in self.seeds:
            for ds in self.datasets:
                for aug in self.augment:
                    out.append(self._original(ds, aug, seed))
        return out

    def _original(self, ds: DatasetSpec, augment: str, seed: int) -> OriginalJob:
        train = dataclasses.replace(self.train, progress=False, threads=self.threads)
        # sharded originals: S and R enter the key (monolithic keys stay as they were)
        sharded = {} if self.shards is None else {"shards": self.shards, "slices": self.slices}
        if ds.files is not None:
            opts = ds.file_options() | {"path": ds.dataset, "size": ds.size, "augment": augment}
            limits = {k: v for k, v in self.data.items() if k in ("train_limit", "eval_limit")}
            files = tuple(sorted((k, json.dumps(v)) for k, v in (opts | limits).items()))
            key = fingerprint({"kind": "original", "files": dict(files),
                               "model": dataclasses.asdict(self.model),
                               "train": _recipe(train), "seed": seed} | sharded)
            return OriginalJob(key=key, dataset=ds, augment=augment, seed=seed, data=None,
                               model=self.model, train=train, files=files, **sharded)
        data = DataConfig(dataset=ds.dataset, size=ds.size, view=ds.view,
                          positive_classes=ds.positive_classes, augment=augment,
                          data_root=self.data_root, **self.data)
        key = fingerprint({"kind": "original", "data": data.identity(),
                           "model": dataclasses.asdict(self.model),
                           "train": _recipe(train), "seed": seed} | sharded)
        return OriginalJob(key=key, dataset=ds, augment=augment, seed=seed, data=data,
                           model=self.model, train=train, **sharded)

    def references(self, originals: list[OriginalJob] | None = None) -> list[ReferenceJob]:
        out = []
        for orig in originals or self.originals():
            for spec in self.forget:
                key = fingerprint({"kind": "reference", "original": orig.key, "forget": spec,
                                   "retain_budget": self.retain_budget})
                out.append(ReferenceJob(key=key, original=orig, forget=spec,
                                        retain_budget=self.retain_budget))
        return out

    def cells(self, references: list[ReferenceJob] | None = None) -> list[CellJob]:
        from medunlearn.methods.base import config_dict, get_method_class, revision_field
        from medunlearn.unlearning import resolve_method

        ev = _frozen_items(self.evaluation)
        gt = _frozen_items(self.gate)
        resolved: dict[tuple[str, str], dict] = {}  # (method label, dataset) -> every option
        out = []
        for ref in references or self.references():
            flag = ref.original.dataset.defaults_flag
            for m in self.methods:
                # the key holds every resolved option (Config < methods.toml < the study's), so a
                # change of the published defaults reruns the cells it affects
                if (m.display, flag) not in resolved:
                    resolved[m.display, flag] = config_dict(
                        resolve_method(m.name, dataset=flag, options=m.options_dict))
                key = fingerprint({"kind": "cell", "reference": ref.key, "method": m.name,
                                   "options": resolved[m.display, flag],
                                   "evaluation": self.evaluation, "gate": self.gate}
                                  | revision_field(get_method_class(m.name)))
                out.append(CellJob(key=key, reference=ref, method=m, evaluation=ev, gate=gt))
        return out

    def plan(self) -> tuple[list[OriginalJob], list[ReferenceJob], list[CellJob]]:
        """All jobs of the grid, in the order they run."""
        originals = self.originals()
        references = self.references(originals)
        return originals, references, self.cells(references)


def _recipe(train: TrainConfig) -> dict:
    d = dataclasses.asdict(train)
    d.pop("threads")
    d.pop("progress")
    return d


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "_", text).strip("_") or "x"


def _frozen_items(d: dict) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), json.dumps(v, sort_keys=True)) for k, v in d.items()))


def forget_ratio(spec: str) -> float | None:
    """The fraction of the training set a forget spec removes, when the spec says so.

    >>> forget_ratio("random:0.2:stratified")
    0.2
    """
    parts = spec.split(":")
    if parts[0] in FRACTION_KINDS and len(parts) > 1:
        try:
            return float(parts[1])
        except ValueError:
            return None
    return None


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
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ExperimentConfigError(
            f"Unknown key(s) {', '.join(map(repr, unknown))} in {where}; valid keys: "
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
    from medunlearn.forget import KINDS

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
            from medunlearn.methods._common import check_options

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
        from medunlearn.verify import check_n

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

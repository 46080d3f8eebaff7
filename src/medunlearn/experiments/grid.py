"""The grid of a study: datasets x forget sets x methods x augmentation x seeds, as jobs.

A parsed study (:class:`ExperimentConfig`, from :mod:`medunlearn.experiments.config`) expands
into three kinds of jobs:

* one :class:`OriginalJob` per (dataset, augmentation, seed): the trained model;
* one :class:`ReferenceJob` per original and forget selection: the model retrained without the
  forget set (the gold standard every method is compared with);
* one :class:`CellJob` per reference and method: unlearn, then evaluate;
* one do-nothing :class:`CellJob` per reference (:meth:`ExperimentConfig.baselines`): the
  original itself scored like a method against the reference ("original (no unlearning)"), so
  that every table shows what doing nothing scores.

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

from medunlearn.config import DataConfig, DataSource, ModelConfig, TrainConfig
from medunlearn.fileio import fingerprint

FRACTION_KINDS = ("random", "positive", "negative", "random-patients")  # kind:F specs
#: The method name and report label of the do-nothing row (the original, not unlearned).
ORIGINAL_METHOD = "original"
ORIGINAL_LABEL = "original (no unlearning)"


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
    # the options a study gives a CSV manifest or class folder (path, size, augment, limits
    # included), as sorted (key, JSON value) pairs; None for MedMNIST
    files: tuple[tuple[str, str], ...] | None = None
    shards: int | None = None  # a sharded original: S shards (None: monolithic)
    slices: int = 1  # and R slices per shard

    @property
    def data_root(self) -> str | None:
        return self.data.data_root if self.data is not None else None

    @property
    def source(self) -> DataSource:
        """The job's data as the validated :class:`~medunlearn.config.DataSource` it trains
        on (``data`` and ``files`` stay as they are: they key the job)."""
        if self.files is None:
            return DataSource(**dataclasses.asdict(self.data))
        opts = {k: json.loads(v) for k, v in self.files}
        return DataSource(dataset=opts.pop("path"), **opts)

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
    def does_nothing(self) -> bool:
        """The do-nothing row: the original model is the "unlearned" model (no unlearning job)."""
        return self.method.name == ORIGINAL_METHOD

    @property
    def slug(self) -> str:
        o = self.original
        return (f"{o.dataset.name}-aug_{o.augment}-{_safe(self.reference.forget)}-"
                f"{_safe(self.method.display)}-s{self.seed}-{self.key}")

    @property
    def folder(self) -> str:
        if self.does_nothing:
            return self.original.folder
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
    shards: int | None = None  # train sharded originals (S shards, R slices; medunlearn.sharding)
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
        from medunlearn.methods.base import (
            get_method_class,
            key_options,
            resolve_method,
            revision_field,
        )

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
                    resolved[m.display, flag] = key_options(
                        resolve_method(m.name, dataset=flag, options=m.options_dict))
                key = fingerprint({"kind": "cell", "reference": ref.key, "method": m.name,
                                   "options": resolved[m.display, flag],
                                   "evaluation": self.evaluation, "gate": self.gate}
                                  | revision_field(get_method_class(m.name)))
                out.append(CellJob(key=key, reference=ref, method=m, evaluation=ev, gate=gt))
        return out

    def baselines(self, references: list[ReferenceJob] | None = None) -> list[CellJob]:
        """One do-nothing row per reference: the original scored against the reference with
        the study's evaluation and gate, exactly like a method. Its key is its own (the cells'
        keys do not change), so adding it reuses every finished cell."""
        ev = _frozen_items(self.evaluation)
        gt = _frozen_items(self.gate)
        spec = MethodSpec(ORIGINAL_METHOD, label=ORIGINAL_LABEL)
        return [CellJob(key=fingerprint({"kind": "do-nothing", "reference": ref.key,
                                         "evaluation": self.evaluation, "gate": self.gate}),
                        reference=ref, method=spec, evaluation=ev, gate=gt)
                for ref in references or self.references()]

    def plan(self) -> tuple[list[OriginalJob], list[ReferenceJob], list[CellJob]]:
        """The jobs of the grid's methods, in the order they run (the do-nothing rows,
        :meth:`baselines`, are run with them by the runner)."""
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


__all__ = ["ORIGINAL_LABEL", "ORIGINAL_METHOD", "CellJob", "DatasetSpec", "ExperimentConfig",
           "MethodSpec", "OriginalJob", "ReferenceJob", "forget_ratio"]

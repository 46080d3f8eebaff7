"""The contract every unlearning method follows, and the registry of methods by CLI name.

A method is a small class with a frozen ``Config`` dataclass of hyperparameters and one method,
:meth:`Method.unlearn`, that takes the original model and an :class:`UnlearnContext` (the data in
memory, the forget and retain sets as index tensors over the training split, the original
training recipe, the seed and the device) and returns an :class:`UnlearnOutcome`.

Register a method with :func:`register_method`; :func:`create_method` builds one by name and
refuses an unknown name by listing the valid ones. :func:`resolve_method` builds one with the
shipped defaults: the Config dataclass < ``defaults/methods.toml`` ``[default.<method>]`` <
``[<dataset>.<method>]`` < the user's options.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from medunlearn.config import ModelConfig, TrainConfig, from_dict, read_packaged_toml
from medunlearn.data import Dataset
from medunlearn.errors import ConfigError
from medunlearn.loop import CPU_FP32, Runtime
from medunlearn.models import Classifier


@dataclass(frozen=True)
class UnlearnContext:
    """Everything a method may use besides the model itself."""

    dataset: Dataset
    forget: torch.Tensor  # (F,) int64 indices into dataset.train
    retain: torch.Tensor  # (R,) int64 indices into dataset.train, disjoint from forget
    seed: int
    train_config: TrainConfig  # the original model's recipe (used by ``retrain``)
    model_config: ModelConfig = field(default_factory=ModelConfig)
    model_spec: dict | None = None  # the original model's resolved spec (arch, width, ...)
    runtime: Runtime = CPU_FP32  # device and arithmetic every method runs in
    # builds a fresh, untrained model of the original's architecture (``retrain``); None:
    # from ``model_spec`` for medunlearn's models, else the original with reset parameters
    model_factory: Callable[[], torch.nn.Module] | None = None
    progress: bool = True
    # Called with the training-split indices of every batch a method reads (audits data access).
    on_batch: Callable[[torch.Tensor], None] | None = None
    # A feature cache (medunlearn.cache.Session) for the method's inference, or None
    cache: Any = None
    # K fold models of the original (an evaluation.companions.CompanionSet of kind "kfold"):
    # their stored out-of-fold outputs, for methods with ``needs_folds`` (``oracle-match``)
    folds: Any = None

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def generator(self, offset: int = 0) -> torch.Generator:
        """A fresh generator derived from the seed (``offset`` separates independent streams)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)

    def seen(self, indices: torch.Tensor) -> None:
        if self.on_batch is not None:
            self.on_batch(indices)


@dataclass
class UnlearnOutcome:
    """What a method returns."""

    model: Classifier
    steps: int  # gradient (or Hessian-vector) steps taken
    seconds: float = 0.0  # wall time of the method; the caller fills it in when left at 0
    details: dict[str, Any] = field(default_factory=dict)  # method-specific facts worth recording


class Method(ABC):
    """Base class of unlearning methods."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # Bumped when a fix changes what the method computes for the same options: run folders,
    # study cells and tuning results keyed on the method are then recomputed, not reused.
    revision: ClassVar[int] = 0
    # Whether the method reads K fold models of the original (``UnlearnContext.folds``); the
    # core refuses to run it without them, before any work.
    needs_folds: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Config:
        """Hyperparameters (subclasses define their own frozen dataclass named ``Config``)."""

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def validate(self) -> None:
        """Check option values (ranges, choices). The shared SGD options are checked for every
        method that has them; override to add a method's own checks (call ``super()``).

        Raises:
            ConfigError: naming the option, the value and the valid range.
        """
        check_options(self.config, self.name)

    @abstractmethod
    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        """Return an unlearned copy of ``model``; ``model`` itself must stay unchanged (the
        caller refuses an outcome that holds the same object). The caller times the call."""


def check_options(cfg, method: str) -> None:
    """Validate the shared options (and ``retain_budget`` when present).

    Raises:
        ConfigError: naming the option, the bad value and the valid range.
    """
    checks = [("epochs", lambda v: v >= 1, "at least 1"), ("lr", lambda v: v > 0, "positive"),
              ("batch_size", lambda v: v >= 1, "at least 1"),
              ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
              ("weight_decay", lambda v: v >= 0, "non-negative"),
              ("retain_budget", lambda v: v is None or v >= 0, "non-negative (or none)"),
              ("retain_per_forget", lambda v: v is None or v > 0, "positive (or none)"),
              ("balance", lambda v: 0 <= v <= 1, "in [0, 1]"),
              ("average", lambda v: 0 <= v < 1, "in [0, 1)")]
    for name, ok, what in checks:
        if hasattr(cfg, name) and not ok(getattr(cfg, name)):
            raise ConfigError(f"Option {name} of method {method!r} must be {what}, got "
                              f"{getattr(cfg, name)!r}.")
    if hasattr(cfg, "weight_by") and cfg.weight_by not in ("retain", "targets"):
        raise ConfigError(f"Option weight_by of method {method!r} must be retain or targets, got "
                          f"{cfg.weight_by!r}.")
    if hasattr(cfg, "schedule") and cfg.schedule not in ("cosine", "onecycle", "constant"):
        raise ConfigError(f"Option schedule of method {method!r} must be cosine, onecycle or "
                          f"constant, got {cfg.schedule!r}.")


_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str, cls: type[Method] | None = None):
    """Register ``cls`` under ``name``; usable as a decorator. A taken name is an error."""

    def deco(c: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not c:
            raise ValueError(f"an unlearning method named {name!r} is already registered")
        c.name = name
        _REGISTRY[name] = c
        return c

    return deco(cls) if cls is not None else deco


def method_names() -> list[str]:
    """Names of all registered methods, in the canonical order (others alphabetically)."""
    _load_builtin()
    from medunlearn.methods import CANONICAL_ORDER

    first = [n for n in CANONICAL_ORDER if n in _REGISTRY]
    return first + sorted(n for n in _REGISTRY if n not in CANONICAL_ORDER)


def get_method_class(name: str) -> type[Method]:
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown unlearning method {name!r}; valid methods: "
                          f"{', '.join(method_names())}.")
    return _REGISTRY[name]


def create_method(name: str, options: dict | None = None) -> Method:
    """Build a registered method with its defaults replaced by ``options``, and validate them
    (so a bad option fails before any model is touched).

    Raises:
        ConfigError: unknown method name (lists the valid ones) or unknown, ill-typed or
            out-of-range option.
    """
    cls = get_method_class(name)
    cfg = from_dict(cls.Config, options or {}, where=f"options of method {name!r}")
    method = cls(cfg)
    method.validate()
    return method


DEFAULTS_VERSION = 1


def load_defaults() -> dict:
    """The parsed ``defaults/methods.toml`` shipped with the package.

    Raises:
        ConfigError: the file's ``version`` is not one this code understands.
    """
    return read_packaged_toml("methods.toml", DEFAULTS_VERSION)


def default_options(method: str, dataset: str | None = None) -> dict:
    """Options from ``defaults/methods.toml`` for a method: the ``default`` section, then the
    dataset's section on top (without the Config dataclass defaults)."""
    data = load_defaults()
    out = dict(data.get("default", {}).get(method, {}))
    if dataset:
        out.update(data.get(dataset, {}).get(method, {}))
    return out


def takes_retain_budget(method: str) -> bool:
    """Whether a method has a ``retain_budget`` option. Methods without one read either no
    retain data (``gradient-ascent``) or all of it by definition (``retrain``, the exact
    reference); a ``retain_budget`` given to them does not apply and is recorded as such."""
    return "retain_budget" in {f.name for f in dataclasses.fields(get_method_class(method).Config)}


def resolve_method(method: str, *, dataset: str | None, options: dict | None = None,
                   retain_budget: int | None = None) -> Method:
    """Build a method with Config defaults < toml default < toml dataset section < ``options``.

    ``retain_budget`` is ignored for methods without that option (see
    :func:`takes_retain_budget`).

    Raises:
        ConfigError: unknown method (lists valid ones), unknown or ill-typed option, or a
            negative ``retain_budget``.
    """
    merged = default_options(method, dataset) | dict(options or {})
    if retain_budget is not None:
        if retain_budget < 0:
            raise ConfigError(f"--retain-budget must be non-negative, got {retain_budget}.")
        if takes_retain_budget(method):
            merged["retain_budget"] = retain_budget
    return create_method(method, merged)


def config_dict(method: Method) -> dict:
    return dataclasses.asdict(method.config)


#: Field metadata of an option added to a method after its release, whose default reproduces
#: the earlier behaviour exactly: such an option enters result keys only when it is set.
KEYED_WHEN_SET = {"keyed": "when_set"}


def key_options(method: Method) -> dict:
    """The resolved options that identify a method's results (run folders, grid cells, bench
    rows): every option, except those marked :data:`KEYED_WHEN_SET` while they hold their
    default. Results computed before such an option existed keep their keys and stay valid;
    records still list every option (:func:`config_dict`)."""
    cfg = method.config
    out = dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("keyed") == "when_set" and getattr(cfg, f.name) == f.default:
            del out[f.name]
    return out


def revision_field(method: Method | type[Method]) -> dict:
    """``{"revision": n}`` for a method revised since its first release, else ``{}`` (so the
    fingerprints of unrevised methods, and every result keyed on them, stay as they were)."""
    return {"revision": method.revision} if method.revision else {}


def _load_builtin() -> None:
    from medunlearn import methods  # noqa: F401  (importing the package registers built-ins)

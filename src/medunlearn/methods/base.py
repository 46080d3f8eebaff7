"""The contract every unlearning method follows, and the registry of methods by CLI name.

A method is a small class with a frozen ``Config`` dataclass of hyperparameters and one method,
:meth:`Method.unlearn`, that takes the original model and an :class:`UnlearnContext` (the data in
memory, the forget and retain sets as index tensors over the training split, the original
training recipe, the seed and the device) and returns an :class:`UnlearnOutcome`.

Register a method with :func:`register_method`; :func:`create_method` builds one by name and
refuses an unknown name by listing the valid ones.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from medunlearn.config import ModelConfig, TrainConfig, from_dict
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
    seconds: float = 0.0  # wall time; filled in by the runner if left at 0
    details: dict[str, Any] = field(default_factory=dict)  # method-specific facts worth recording


class Method(ABC):
    """Base class of unlearning methods."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # Bumped when a fix changes what the method computes for the same options: run folders,
    # study cells and tuning results keyed on the method are then recomputed, not reused.
    revision: ClassVar[int] = 0

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
        from medunlearn.methods._common import check_options

        check_options(self.config, self.name)

    @abstractmethod
    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        """Return an unlearned copy (or the in-place modified ``model``)."""


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


def config_dict(method: Method) -> dict:
    return dataclasses.asdict(method.config)


def revision_field(method: Method | type[Method]) -> dict:
    """``{"revision": n}`` for a method revised since its first release, else ``{}`` (so the
    fingerprints of unrevised methods, and every result keyed on them, stay as they were)."""
    return {"revision": method.revision} if method.revision else {}


def _load_builtin() -> None:
    from medunlearn import methods  # noqa: F401  (importing the package registers built-ins)

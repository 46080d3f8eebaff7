"""Frozen configuration dataclasses shared by training, unlearning and evaluation.

The CLI only builds these; every run writes the resolved values to ``config.json`` next to its
artefacts, and :func:`from_dict` rebuilds them (unknown keys are an error, never ignored).

:class:`DataSource` is the one validated description of the data a user asks for (a MedMNIST
flag, or image files, with their options). The CLI generates its data options from its fields
(``commands._common.data_options``) and builds it once; ``data.load_dataset``,
``runs.run_training`` and experiment grids take it. Adding a data option means adding a field
there (its help text in the field's metadata) and reading it in the loader of its kind.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from medunlearn.errors import ConfigError

#: The exact unlearning methods: they retrain on the retain data, so their result is the model
#: training without the forgotten images would have produced (``sisa`` retrains only the affected
#: shards of a sharded model; see medunlearn.sharding). They have nothing to tune, and the
#: registry treats a version they made as free of every image withdrawn before it.
EXACT_METHODS = ("retrain", "sisa")


@dataclass(frozen=True)
class DataConfig:
    """Which data a model sees."""

    dataset: str = "pneumoniamnist"  # any MedMNIST 2D flag
    size: int = 28  # 28, or 64/128/224 where medmnist has that file
    view: str = "auto"  # "native", "binary" or "auto" (binary where disease classes are known)
    positive_classes: tuple[int, ...] | None = None  # native classes meaning disease
    augment: str = "basic"  # "none", "basic" (crop + flip) or "strong"
    train_limit: int | None = None  # use a seeded random subset of the training split
    eval_limit: int | None = None  # likewise for the validation and test splits
    data_root: str | None = None  # None: $MEDMNIST_ROOT, else medmnist's default root
    download: bool = True  # download missing files through medmnist when a network exists
    verify_md5: bool = True  # compare the file's MD5 with medmnist's published value

    def identity(self) -> dict:
        """The fields that change which samples and labels a model sees (not where they live)."""
        d = dataclasses.asdict(self)
        for k in ("data_root", "download", "verify_md5"):
            d.pop(k)
        return d


_FILES = "files"  # metadata "panel": options of your own images (CSV manifest or class folder)


def _option(help: str, **cli) -> dict:
    """Field metadata of a data option: its help text and how the CLI spells it (``flags``,
    ``metavar``, ``panel``; ``cli_type`` when the CLI reads it as another type; ``negate`` for a
    flag that turns the option off, e.g. ``--no-download``)."""
    return {"help": help, **cli}


@dataclass(frozen=True)
class DataSource:
    """The data a model sees, validated once: a MedMNIST 2D dataset, or your own images.

    ``dataset`` is a MedMNIST flag (``pneumoniamnist``), a CSV manifest (one row per image) or a
    folder with one subfolder per class; :attr:`kind` says which. MedMNIST options and file
    options live side by side; an option of the other kind must keep its default.

    Raises:
        ConfigError: options of the other kind of source (e.g. ``--positive-values`` for a
            MedMNIST flag), or a non-binary view of image files.
    """

    dataset: str = field(default="pneumoniamnist", metadata=_option(
        "MedMNIST 2D dataset flag, e.g. pneumoniamnist (see 'medunlearn datasets'), or your own "
        "images: a CSV manifest (one row per image) or a folder with one subfolder per class.",
        flags=("--dataset", "-d")))
    size: int | None = field(default=None, metadata=_option(
        "Image size: MedMNIST 28 (default), or 64/128/224 where available; image files are "
        "resized to this square size (default: keep theirs)."))
    view: str = field(default="auto", metadata=_option(
        "Label view: native, binary (disease = 1) or auto."))
    positive_classes: tuple[int, ...] | None = field(default=None, metadata=_option(
        "Native classes that mean disease, e.g. 0,1,4.", cli_type=str))
    augment: str = field(default="basic", metadata=_option(
        "Augmentation: none, basic (crop+flip) or strong."))
    train_limit: int | None = field(default=None, metadata=_option(
        "Use a seeded random subset of this many training images."))
    eval_limit: int | None = field(default=None, metadata=_option(
        "Likewise for validation and test."))
    data_root: str | None = field(default=None, metadata=_option(
        "Folder with the MedMNIST .npz files (default: $MEDMNIST_ROOT, else the checkout's "
        "../shared/data/medmnist, else medmnist's ~/.medmnist).", metavar="DIR"))
    download: bool = field(default=True, metadata=_option(
        "Never download missing files.", flags=("--no-download",), negate=True))
    verify_md5: bool = field(default=True, metadata=_option(
        "Skip the MD5 check (for your own files in MedMNIST format).", flags=("--no-verify",),
        negate=True))
    path_column: str = field(default="path", metadata=_option(
        "Manifest column with each image's path, relative to the CSV.", panel=_FILES))
    label_column: str = field(default="label", metadata=_option(
        "Manifest column with the label.", panel=_FILES))
    patient_column: str | None = field(default="auto", metadata=_option(
        "Manifest column with the patient id; auto: patient_id if present; none: DICOM "
        "PatientID, else one patient per image.", panel=_FILES))
    split_column: str | None = field(default="auto", metadata=_option(
        "Manifest column with train/val/test; auto: split if present; none: make "
        "patient-grouped splits.", panel=_FILES))
    metadata_columns: str | Sequence[str] | None = field(default="auto", metadata=_option(
        "Comma-separated columns kept for subgroup analysis; auto: sex, age (as age_band), "
        "view, site, ... when present; none.", panel=_FILES, cli_type=str))
    positive_values: str | Sequence[str] | None = field(default=None, metadata=_option(
        "Label values (or class folder names) that mean disease, comma-separated, e.g. TB; "
        "default 1 for 0/1 labels.", panel=_FILES, cli_type=str))
    negative_values: str | Sequence[str] | None = field(default=None, metadata=_option(
        "The only other allowed label values (others are refused); default: any other value "
        "is negative.", panel=_FILES, cli_type=str))
    channels: str = field(default="auto", metadata=_option(
        "auto (grey X-rays -> 1 channel, colour photographs -> RGB), 1, 3, or source (colour as "
        "stored; UNSAFE: can keep a file-format shortcut).", panel=_FILES))
    resplit: bool = field(default=False, metadata=_option(
        "Ignore the given splits and make new ones grouped by patient (needed when given splits "
        "share patients).", panel=_FILES))
    val_fraction: float = field(default=0.1, metadata=_option(
        "Share of images in a carved validation split.", panel=_FILES))
    test_fraction: float = field(default=0.2, metadata=_option(
        "Share of images in a carved test split.", panel=_FILES))
    split_seed: int = field(default=0, metadata=_option(
        "Seed of carved splits (independent of --seed).", panel=_FILES))
    cache_dir: str | None = field(default=None, metadata=_option(
        "Cache of resized images (default: $MEDUNLEARN_CACHE_DIR, else ~/.cache/medunlearn).",
        panel=_FILES))

    def __post_init__(self) -> None:
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(
                self.size, int) or self.size < 1):
            raise ConfigError(f"--size must be a positive whole number of pixels (e.g. 28, 64 "
                              f"or 128), got {_short(self.size)}; leave it out to keep the "
                              "images' own size.")
        fractions = {"--val-fraction": self.val_fraction, "--test-fraction": self.test_fraction}
        for flag, value in fractions.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not (
                    0 <= value < 1):
                raise ConfigError(f"{flag} must be a share of the images from 0 to below 1 "
                                  f"(e.g. 0.1), got {_short(value)}.")
        total = self.val_fraction + self.test_fraction
        if total >= 1:
            raise ConfigError(f"--val-fraction {self.val_fraction} and --test-fraction "
                              f"{self.test_fraction} add up to {total:g}, leaving no training "
                              "images; keep their sum below 1 (e.g. 0.1 and 0.2).")
        if self.kind == "medmnist":
            if self.positive_values or self.negative_values or self.resplit:
                raise ConfigError("--positive-values, --negative-values and --resplit apply to "
                                  "your own images (--dataset FILE.csv or FOLDER); for MedMNIST "
                                  "use --positive-classes.")
        elif self.positive_classes or self.view not in ("auto", "binary"):
            raise ConfigError("Image files are loaded in a binary view: name the disease labels "
                              "with --positive-values instead of --positive-classes/--view.")

    @property
    def kind(self) -> str:
        """``medmnist`` (a MedMNIST flag), ``folder`` (a class folder) or ``manifest``."""
        from medunlearn.data.info import dataset_flags

        if self.dataset.lower() in dataset_flags():
            return "medmnist"
        path = Path(self.dataset).expanduser()
        if path.is_dir():
            return "folder"
        if "/" in self.dataset or "." in self.dataset or path.exists():
            return "manifest"
        return "medmnist"  # an unknown flag: load_dataset lists the known ones

    def medmnist(self) -> DataConfig:
        """The MedMNIST part as the :class:`~medunlearn.config.DataConfig` run folders record."""
        return DataConfig(dataset=self.dataset, size=self.size or 28, view=self.view,
                          positive_classes=self.positive_classes, augment=self.augment,
                          train_limit=self.train_limit, eval_limit=self.eval_limit,
                          data_root=self.data_root, download=self.download,
                          verify_md5=self.verify_md5)

    def file_options(self) -> dict:
        """The options of a manifest or class folder (``none`` words read as None)."""
        def unset(v):
            return None if isinstance(v, str) and v.lower() == "none" else v

        return {"path_column": self.path_column, "label_column": self.label_column,
                "patient_column": unset(self.patient_column),
                "split_column": unset(self.split_column),
                "metadata_columns": unset(self.metadata_columns),
                "positive_values": self.positive_values, "negative_values": self.negative_values,
                "size": self.size, "channels": self.channels, "resplit": self.resplit,
                "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "split_seed": self.split_seed, "augment": self.augment,
                "train_limit": self.train_limit, "eval_limit": self.eval_limit,
                "cache_dir": self.cache_dir}


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture."""

    # "resnet18" (stride-1 stem), "resnet18-s2" (stride-2 stem), "tv-resnet18", "tv-resnet50",
    # "auto" (by image size, see models.resolve_arch)
    arch: str = "auto"
    width: int = 16  # base channel count of resnet18 (64 = the full-width network)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation recipe, shared by training and the ``retrain`` reference."""

    # None: enough epochs for ~20k training samples, at least 10 (resolve_epochs); tiny
    # datasets such as BreastMNIST (546 images) need ~40 epochs to converge
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    class_weights: str = "balanced"  # "balanced" (inverse class frequency) or "none"
    schedule: str = "onecycle"  # "onecycle", "cosine" or "constant"
    select: str = "val_auc"  # checkpoint kept: "val_auc", "val_acc", "val_loss" or "last"
    # "auto": bf16 autocast where the CPU has native bf16 (AVX512-BF16/AMX) or the GPU has it,
    # fp16 on other CUDA GPUs, else fp32 (see medunlearn.loop.resolve_precision)
    precision: str = "auto"
    device: str = "auto"  # "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps"
    threads: int | None = None  # torch CPU threads (None: leave torch's default)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "momentum", "label_smoothing"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0):
                raise ConfigError(f"{_flag(name)} must be a finite number of at least 0, got "
                                  f"{_short(value)}; e.g. {_flag(name)} "
                                  f"{getattr(TrainConfig, name)}.")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(
                self.threads, int) or self.threads < 1):
            raise ConfigError(f"--threads must be a whole number of at least 1, got "
                              f"{_short(self.threads)}; leave it out to use torch's default.")
        if not isinstance(self.device, str) or not self.device.strip():
            raise ConfigError(f"--device must name a device (auto, cpu, cuda, cuda:N or mps), "
                              f"got {_short(self.device)}.")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(
                self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"--batch-size must be a whole number of at least 1, got "
                              f"{_short(self.batch_size)}.")


#: Unicode categories refused in every user-given text that certificates, status or logs show:
#: control characters (C0 and C1: NEL, CSI, ...), format characters (bidi overrides,
#: zero-width), line and paragraph separators, surrogates and private use.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co"})


def unsafe_characters(text: str, allowed: str = "") -> list[str]:
    """The characters of ``text`` that could hide or reorder text when shown (see
    :data:`UNSAFE_CATEGORIES`), as ``U+XXXX`` codes in order of appearance, without repeats."""
    out = []
    for c in text:
        if c not in allowed and unicodedata.category(c) in UNSAFE_CATEGORIES:
            code = f"U+{ord(c):04X}"
            if code not in out:
                out.append(code)
    return out


#: The largest seed every random number generator used here accepts (numpy's legacy seeding).
MAX_SEED = 2**32 - 1


def check_seed(seed, option: str = "--seed") -> None:
    """Refuse a seed that is not a whole number from 0 to :data:`MAX_SEED`.

    Raises:
        ConfigError: naming ``option`` and the allowed range.
    """
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{option} must be a whole number from 0 to {MAX_SEED} (2^32 - 1), "
                          f"got {_short(seed)}. Leave it out to use the default.")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _short(value, limit: int = 40) -> str:
    """``repr`` of a value for an error message, cut to ``limit`` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# How an optional option is left unset in files that have no null (TOML): retain_budget = "none"
NONE_WORDS = ("none", "null")


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None or (type(None) in args and isinstance(value, str)
                         and value.strip().lower() in NONE_WORDS):
        if type(None) in args or tp is typing.Any:
            return None
        raise ConfigError(f"{where} may not be empty (null).")
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where) if len(inner) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        return tuple(_coerce(args[0], v, where) for v in value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}.")
        return value
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a {tp.__name__}, got {value!r}.") from None
    return value


def from_dict(cls, data: dict | None, *, where: str | None = None):
    """Build a (possibly nested) config dataclass from a plain dict.

    Raises:
        ConfigError: unknown keys, or values of the wrong type.
    """
    where = where or cls.__name__
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        shown = ", ".join(k if len(k) <= 40 and k.isprintable() else _short(k)
                          for k in map(str, unknown[:5]))
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ConfigError(
            f"Unknown option(s) {shown}{more} in {where}; valid options: "
            f"{', '.join(sorted(names))}."
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def as_config(cls, value, *, where: str):
    """``value`` as a ``cls`` config: None gives the defaults, an instance is kept, a mapping is
    read with :func:`from_dict`.

    Raises:
        ConfigError: another type, or a mapping with unknown or ill-typed options.
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict) or hasattr(value, "keys"):
        return from_dict(cls, dict(value), where=where)
    raise ConfigError(f"{where} must be a {cls.__name__} or a dict of its fields, got "
                      f"{type(value).__name__}.")


def replace(cfg, **changes):
    """``dataclasses.replace`` that ignores ``None`` values (unset CLI options)."""
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})


def parse_option_pairs(pairs: Iterable[str]) -> dict:
    """Parse ``key=value`` strings; values are read as TOML scalars (``0.01``, ``true``, ``3``),
    ``none``/``null`` as None, anything else as a string.

    Raises:
        ConfigError: an entry without ``=`` or a key given twice.
    """
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--option takes key=value (e.g. --option lr=0.01), got {pair!r}.")
        if key in out:
            raise ConfigError(f"Option {key!r} is given twice; give it once.")
        raw = raw.strip()
        if raw.lower() in NONE_WORDS:
            out[key] = None
            continue
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw
    return out


def train_recipe(train_cfg: TrainConfig) -> dict:
    """The parts of a training config that change results (not the device, threads or
    progress bars): what run folders and companion sets record as the recipe."""
    d = dataclasses.asdict(train_cfg)
    for k in ("threads", "progress", "device"):
        d.pop(k)
    return d


def read_packaged_toml(name: str, version: int) -> dict:
    """A versioned TOML file shipped in ``medunlearn/defaults/``, parsed.

    Raises:
        ConfigError: the file's ``version`` is not ``version``.
    """
    text = resources.files("medunlearn").joinpath(f"defaults/{name}").read_text("utf-8")
    data = tomllib.loads(text)
    if data.get("version") != version:
        raise ConfigError(f"defaults/{name} has version {data.get('version')!r}; this "
                          f"medunlearn reads version {version}. Reinstall the package.")
    return data


__all__ = ["EXACT_METHODS", "MAX_SEED",
           "DataConfig", "DataSource", "ModelConfig", "TrainConfig", "as_config",
           "check_seed", "from_dict", "unsafe_characters",
           "parse_option_pairs", "read_packaged_toml", "replace", "field", "train_recipe"]

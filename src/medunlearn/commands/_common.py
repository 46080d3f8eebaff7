"""Options shared by several commands, and small printing helpers."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from medunlearn.config import DataConfig
from medunlearn.errors import ConfigError, MedUnlearnError


def parse_int_list(text: str | None, what: str = "--positive-classes") -> tuple[int, ...] | None:
    """Parse ``"0,1,4"`` into ``(0, 1, 4)``."""
    if text is None or text == "":
        return None
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise ConfigError(f"{what} takes comma-separated whole numbers such as 0,1,4; "
                          f"got {text[:60]!r}.") from None


Dataset = Annotated[str, typer.Option("--dataset", "-d", help="MedMNIST 2D dataset flag, e.g. "
                                      "pneumoniamnist (see 'medunlearn datasets'), or your own "
                                      "images: a CSV manifest (one row per image) or a folder "
                                      "with one subfolder per class.")]
Size = Annotated[int | None, typer.Option(help="Image size: MedMNIST 28 (default), or 64/128/224 "
                                          "where available; image files are resized to this "
                                          "square size (default: keep theirs).")]
View = Annotated[str, typer.Option(help="Label view: native, binary (disease = 1) or auto.")]
Positive = Annotated[str | None, typer.Option(
    "--positive-classes", help="Native classes that mean disease, e.g. 0,1,4.")]
Augment = Annotated[str, typer.Option(help="Augmentation: none, basic (crop+flip) or strong.")]
TrainLimit = Annotated[int | None, typer.Option(help="Use a seeded random subset of this many "
                                                "training images.")]
EvalLimit = Annotated[int | None, typer.Option(help="Likewise for validation and test.")]
DataRoot = Annotated[str | None, typer.Option(
    "--data-root", metavar="DIR", help="Folder with the MedMNIST .npz files (default: "
    "$MEDMNIST_ROOT, else the checkout's ../shared/data/medmnist, else medmnist's "
    "~/.medmnist).")]
Device = Annotated[str, typer.Option(
    metavar="DEVICE",
    help="Where to run: auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps.")]
NoDownload = Annotated[bool, typer.Option("--no-download", help="Never download missing files.")]
NoVerify = Annotated[bool, typer.Option("--no-verify", help="Skip the MD5 check (for your own "
                                        "files in MedMNIST format).")]


_FILES = "Your images (with --dataset FILE.csv or FOLDER)"
PathColumn = Annotated[str, typer.Option(help="Manifest column with each image's path, relative "
                                         "to the CSV.", rich_help_panel=_FILES)]
LabelColumn = Annotated[str, typer.Option(help="Manifest column with the label.",
                                          rich_help_panel=_FILES)]
PatientColumn = Annotated[str, typer.Option(help="Manifest column with the patient id; auto: "
                                            "patient_id if present; none: DICOM PatientID, else "
                                            "one patient per image.", rich_help_panel=_FILES)]
SplitColumn = Annotated[str, typer.Option(help="Manifest column with train/val/test; auto: "
                                          "split if present; none: make patient-grouped "
                                          "splits.", rich_help_panel=_FILES)]
MetadataColumns = Annotated[str, typer.Option(help="Comma-separated columns kept for subgroup "
                                              "analysis; auto: sex, age (as age_band), view, "
                                              "site, ... when present; none.",
                                              rich_help_panel=_FILES)]
PositiveValues = Annotated[str | None, typer.Option(
    help="Label values (or class folder names) that mean disease, comma-separated, e.g. TB; "
    "default 1 for 0/1 labels.", rich_help_panel=_FILES)]
NegativeValues = Annotated[str | None, typer.Option(
    help="The only other allowed label values (others are refused); default: any other "
    "value is negative.", rich_help_panel=_FILES)]
Channels = Annotated[str, typer.Option(help="auto (grey X-rays -> 1 channel, colour photographs "
                                       "-> RGB), 1, 3, or source (colour as stored; UNSAFE: "
                                       "can keep a file-format shortcut).",
                                       rich_help_panel=_FILES)]
Resplit = Annotated[bool, typer.Option(help="Ignore the given splits and make new ones grouped "
                                       "by patient (needed when given splits share patients).",
                                       rich_help_panel=_FILES)]
ValFraction = Annotated[float, typer.Option(help="Share of images in a carved validation split.",
                                            rich_help_panel=_FILES)]
TestFraction = Annotated[float, typer.Option(help="Share of images in a carved test split.",
                                             rich_help_panel=_FILES)]
SplitSeed = Annotated[int, typer.Option(help="Seed of carved splits (independent of --seed).",
                                        rich_help_panel=_FILES)]
CacheDir = Annotated[str | None, typer.Option(help="Cache of resized images (default: "
                                              "$MEDUNLEARN_CACHE_DIR, else ~/.cache/medunlearn).",
                                              rich_help_panel=_FILES)]


def is_file_source(dataset: str) -> bool:
    """True when ``--dataset`` names a CSV manifest or an image folder, not a MedMNIST flag."""
    from pathlib import Path

    from medunlearn.data import dataset_flags

    if dataset.lower() in dataset_flags():
        return False
    return "/" in dataset or "." in dataset or Path(dataset).expanduser().exists()


def load_files(dataset: str, size: int | None, view: str, positive: str | None, augment: str,
               train_limit: int | None, eval_limit: int | None, *, seed: int, path_column: str,
               label_column: str, patient_column: str, split_column: str, metadata_columns: str,
               positive_values: str | None, negative_values: str | None, channels: str,
               resplit: bool, val_fraction: float, test_fraction: float, split_seed: int,
               cache_dir: str | None):
    """The Dataset of a CSV manifest or class folder given as ``--dataset`` (else None)."""
    if not is_file_source(dataset):
        if positive_values or negative_values or resplit:
            raise ConfigError("--positive-values, --negative-values and --resplit apply to your "
                              "own images (--dataset FILE.csv or FOLDER); for MedMNIST use "
                              "--positive-classes.")
        return None
    if positive or view not in ("auto", "binary"):
        raise ConfigError("Image files are loaded in a binary view: name the disease labels with "
                          "--positive-values instead of --positive-classes/--view.")
    from medunlearn.data.manifest import load_files as load

    def opt(v):
        return None if v.lower() == "none" else v

    return load(dataset, path_column=path_column, label_column=label_column,
                patient_column=opt(patient_column), split_column=opt(split_column),
                metadata_columns=opt(metadata_columns), positive_values=positive_values,
                negative_values=negative_values, size=size, channels=channels, resplit=resplit,
                val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
                augment=augment, train_limit=train_limit, eval_limit=eval_limit,
                cache_dir=cache_dir, seed=seed)


def data_config(dataset: str, size: int | None, view: str, positive: str | None, augment: str,
                train_limit: int | None, eval_limit: int | None, data_root: str | None,
                no_download: bool, no_verify: bool) -> DataConfig:
    if is_file_source(dataset):
        return DataConfig(augment=augment)  # recorded through the Dataset's source instead
    return DataConfig(dataset=dataset, size=size or 28, view=view,
                      positive_classes=parse_int_list(positive), augment=augment,
                      train_limit=train_limit, eval_limit=eval_limit, data_root=data_root,
                      download=not no_download, verify_md5=not no_verify)


def echo_json(obj) -> None:
    from medunlearn.io import to_jsonable

    typer.echo(json.dumps(to_jsonable(obj), indent=2))


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def run_app(typer_app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run a typer app and turn its outcome into an exit code (user errors: 2, no traceback)."""
    try:
        typer_app(args=argv, prog_name="medunlearn")
    except MedUnlearnError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        return 2
    except SystemExit as exc:  # typer's standalone mode ends with SystemExit
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return 0

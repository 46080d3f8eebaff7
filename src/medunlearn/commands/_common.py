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
                                      "pneumoniamnist (see 'medunlearn datasets').")]
Size = Annotated[int, typer.Option(help="Image size: 28, or 64/128/224 where available.")]
View = Annotated[str, typer.Option(help="Label view: native, binary (disease = 1) or auto.")]
Positive = Annotated[str | None, typer.Option(
    "--positive-classes", help="Native classes that mean disease, e.g. 0,1,4.")]
Augment = Annotated[str, typer.Option(help="Augmentation: none, basic (crop+flip) or strong.")]
TrainLimit = Annotated[int | None, typer.Option(help="Use a seeded random subset of this many "
                                                "training images.")]
EvalLimit = Annotated[int | None, typer.Option(help="Likewise for validation and test.")]
DataRoot = Annotated[str | None, typer.Option(
    "--data-root", help="Folder with the MedMNIST .npz files (default: $MEDMNIST_ROOT, else "
    "medmnist's ~/.medmnist).")]
NoDownload = Annotated[bool, typer.Option("--no-download", help="Never download missing files.")]
NoVerify = Annotated[bool, typer.Option("--no-verify", help="Skip the MD5 check (for your own "
                                        "files in MedMNIST format).")]


def data_config(dataset: str, size: int, view: str, positive: str | None, augment: str,
                train_limit: int | None, eval_limit: int | None, data_root: str | None,
                no_download: bool, no_verify: bool) -> DataConfig:
    return DataConfig(dataset=dataset, size=size, view=view,
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

"""Options shared by several commands, and small printing helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import os
import types
import typing
from pathlib import Path
from typing import Annotated

import typer

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


Device = Annotated[str, typer.Option(
    metavar="DEVICE",
    help="Where to run: auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps.")]

_FILES_PANEL = "Your images (with --dataset FILE.csv or FOLDER)"


def _data_parameter(f: dataclasses.Field, hint) -> inspect.Parameter:
    """The CLI option of one :class:`DataSource` field, from the field's metadata."""
    meta = f.metadata
    if meta.get("negate"):  # a flag that turns the option off: --no-download
        name, tp, default = meta["flags"][0].lstrip("-").replace("-", "_"), bool, False
    else:
        name, default = f.name, f.default
        tp = meta.get("cli_type") or hint
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if args and typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = args[0] if len(args) == 1 else str
        if default is None:
            tp = tp | None
    option = typer.Option(*meta.get("flags", ()), help=meta["help"], metavar=meta.get("metavar"),
                          rich_help_panel=_FILES_PANEL if meta.get("panel") else None)
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                             annotation=Annotated[tp, option])


def _data_parameters() -> dict[str, inspect.Parameter]:
    """Field name -> CLI option, for every field of :class:`DataSource`, in field order."""
    from medunlearn.config import DataSource

    hints = typing.get_type_hints(DataSource)
    return {f.name: _data_parameter(f, hints[f.name]) for f in dataclasses.fields(DataSource)}


def data_option(name: str):
    """The CLI option of one data field (e.g. ``data_option("data_root")`` for commands that
    take only ``--data-root``), as an ``Annotated`` type."""
    return _data_parameters()[name].annotation


DataRoot = data_option("data_root")
NoDownload = data_option("download")


def data_options(command):
    """Give ``command`` every data-source option in place of its ``data`` parameter.

    The options are generated from :class:`~medunlearn.data.sources.DataSource`'s fields (one
    definition for ``train``, ``pipeline`` and any other command that loads data); the command
    receives them built and validated as one ``DataSource``.
    """
    fields = _data_parameters()
    sig = inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)
    params = []
    for p in sig.parameters.values():
        if p.name == "data":
            params += fields.values()
        else:
            params.append(p.replace(annotation=hints.get(p.name, p.annotation)))

    @functools.wraps(command)
    def wrapper(**kwargs):
        given = {field: kwargs.pop(p.name) for field, p in fields.items()}
        return command(data=data_source(given), **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def data_source(given: dict):
    """The :class:`DataSource` of the data options a command received (field -> value)."""
    from medunlearn.config import DataSource

    values = dict(given)
    for f in dataclasses.fields(DataSource):
        if f.metadata.get("negate"):
            values[f.name] = not values[f.name]
    values["positive_classes"] = parse_int_list(values["positive_classes"])
    return DataSource(**values)


# The checkout layout the scripts use (scripts/env.sh): MedMNIST files in ../shared/data/medmnist
BUNDLED_DATA = Path("..") / "shared" / "data" / "medmnist"


def _checkouts() -> list[Path]:
    """medunlearn checkouts near this process: the one this package is installed from (an
    editable install, as scripts/setup.sh makes) and the current folder if it is one."""
    out = []
    package = Path(__file__).resolve().parents[1]  # .../src/medunlearn
    if package.parent.name == "src" and (package.parents[1] / "pyproject.toml").is_file():
        out.append(package.parents[1])
    cwd = Path.cwd()
    if (cwd / "src" / "medunlearn").is_dir() and cwd.resolve() not in out:
        out.append(cwd.resolve())
    return out


def bundled_data_root() -> Path | None:
    """The bundled MedMNIST folder next to a checkout (``../shared/data/medmnist``), if any."""
    for checkout in _checkouts():
        cand = (checkout / BUNDLED_DATA).resolve()
        if cand.is_dir() and any(cand.glob("*.npz")):
            return cand
    return None


@contextlib.contextmanager
def default_data_root():
    """Without ``$MEDMNIST_ROOT``, use the bundled data the way scripts/env.sh does, so that
    README commands find it without sourcing that script (restored afterwards)."""
    from medunlearn.data.files import ROOT_ENV

    if os.environ.get(ROOT_ENV) or (root := bundled_data_root()) is None:
        yield
        return
    os.environ[ROOT_ENV] = str(root)
    try:
        yield
    finally:
        os.environ.pop(ROOT_ENV, None)


def echo_json(obj) -> None:
    from medunlearn.fileio import to_jsonable

    typer.echo(json.dumps(to_jsonable(obj), indent=2))


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


@contextlib.contextmanager
def notes_as_plain_lines():
    """Print medunlearn's remarks about the user's data (warnings whose category carries
    ``medunlearn_note``, e.g. ``data.manifest.DataNote``) as one ``note: ...`` line each, once,
    instead of Python's warning format with a source line of the package; other warnings are
    shown as usual."""
    import warnings

    original, seen = warnings.showwarning, set()

    def show(message, category, filename, lineno, file=None, line=None):
        if not getattr(category, "medunlearn_note", False):
            return original(message, category, filename, lineno, file, line)
        text = str(message)
        if text not in seen:
            seen.add(text)
            typer.echo(f"note: {text}", err=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def run_app(typer_app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run a typer app and turn its outcome into an exit code (user errors: 2, no traceback)."""
    try:
        with notes_as_plain_lines():
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

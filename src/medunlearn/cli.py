"""The ``medunlearn`` command line.

The CLI is thin: each command builds config dataclasses and calls the Python API. Commands live
in ``medunlearn.commands.*``; every module there has a ``register(app)`` function. User errors
(:class:`~medunlearn.errors.MedUnlearnError`) are printed without a traceback, exit code 2.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import sys
from pathlib import Path

import typer

from medunlearn import __version__
from medunlearn.commands._common import run_app

app = typer.Typer(
    name="medunlearn",
    help="Make a medical image classifier forget patients' images, and prove it did so safely.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: readable at 80 columns (rich's boxed table squeezed the help texts into
    # a narrow column, cut examples short and showed a <bool> type on every flag)
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

# The checkout layout the scripts use (scripts/env.sh): MedMNIST files in ../shared/data/medmnist
BUNDLED_DATA = Path("..") / "shared" / "data" / "medmnist"
bundled_in_use: Path | None = None  # set while main() runs with the bundled folder as default


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medunlearn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Make a medical image classifier forget patients' images, and prove it did so safely."""


def _register_commands() -> None:
    from medunlearn import commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        if mod.startswith("_"):
            continue
        module = importlib.import_module(f"medunlearn.commands.{mod}")
        if hasattr(module, "register"):
            module.register(app)
    for group in app.registered_groups:  # sub-command groups: the same plain help
        group.typer_instance.rich_markup_mode = None


_register_commands()


def _checkouts() -> list[Path]:
    """medunlearn checkouts near this process: the one this package is installed from (an
    editable install, as scripts/setup.sh makes) and the current folder if it is one."""
    out = []
    here = Path(__file__).resolve()
    if here.parents[1].name == "src" and (here.parents[2] / "pyproject.toml").is_file():
        out.append(here.parents[2])
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
def _default_data_root():
    """Without ``$MEDMNIST_ROOT``, use the bundled data the way scripts/env.sh does, so that
    README commands find it without sourcing that script (restored afterwards)."""
    from medunlearn.data.files import ROOT_ENV

    if os.environ.get(ROOT_ENV) or (root := bundled_data_root()) is None:
        yield
        return
    global bundled_in_use
    os.environ[ROOT_ENV] = str(root)
    bundled_in_use = root
    try:
        yield
    finally:
        os.environ.pop(ROOT_ENV, None)
        bundled_in_use = None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    with _default_data_root():
        return run_app(app, argv)


if __name__ == "__main__":  # pragma: no cover
    from medunlearn.cli import main as _main  # the importable module, not this __main__ copy

    sys.exit(_main())

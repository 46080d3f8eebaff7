"""The ``medunlearn`` command line.

The CLI is thin: each command builds config dataclasses and calls the Python API. Commands live
in ``medunlearn.commands.*``; every module there has a ``register(app)`` function. User errors
(:class:`~medunlearn.errors.MedUnlearnError`) are printed without a traceback, exit code 2.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from medunlearn import __version__
from medunlearn.commands._common import bundled_data_root, default_data_root, run_app

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    with default_data_root():
        return run_app(app, argv)


if __name__ == "__main__":  # pragma: no cover
    from medunlearn.cli import main as _main  # the importable module, not this __main__ copy

    sys.exit(_main())


__all__ = ["app", "bundled_data_root", "main"]

"""``python -m medunlearn.registry``: the registry commands alone (``registry``, ``forget``,
``audit``) without importing the rest of the CLI; used by crash tests to start fast."""

from __future__ import annotations

import sys

import typer

from medunlearn.commands import registry as commands
from medunlearn.commands._common import run_app

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
commands.register(app)


def main(argv: list[str] | None = None) -> int:
    return run_app(app, argv)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m medunlearn.registry``: the registry commands alone (``registry``, ``forget``,
``audit``) without importing the rest of the CLI; used by crash tests to start fast."""

from __future__ import annotations

import sys

import typer

from medunlearn.commands import registry as commands
from medunlearn.errors import MedUnlearnError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
commands.register(app)


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, prog_name="medunlearn")
    except MedUnlearnError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        return 2
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

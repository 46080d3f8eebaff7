"""Child process of the crash and concurrency tests: runs a registry command with the fake steps
and reports every stage it reaches.

Usage: ``python _registry_child.py [--fail M1,M2] [--delay S] TARGET ARGS...``. ``ARGS`` is a
registry command (``forget``, ``registry ...`` or ``audit ...``) run with
``medunlearn.testing``'s fake steps installed (``--fail``: methods whose verdict fails;
``--delay``: seconds each fake step waits). Each stage the workflow reports through
``medunlearn.registry.store.stage`` is printed as ``STAGE name#k`` (k counts repeats of a name).
On reaching ``TARGET`` the child prints ``STOPPED`` and waits on stdin until the parent kills it
(``-`` never stops), so a kill lands exactly at a stage, whatever the machine's load.

Only the registry's commands are loaded (not the whole CLI), so the child starts fast.
"""

import argparse
import sys
from collections import Counter

import typer

from medunlearn.commands import registry as commands
from medunlearn.commands._common import run_app
from medunlearn.registry import store
from medunlearn.testing import fake_registry_steps

# the child's own options come first; everything after TARGET is the registry command
parser = argparse.ArgumentParser()
parser.add_argument("--fail", default="", help="Comma-separated methods the fake gate fails.")
parser.add_argument("--delay", type=float, default=0.0, help="Seconds each fake step waits.")
parser.add_argument("target")
parser.add_argument("argv", nargs=argparse.REMAINDER)
opts = parser.parse_args()
seen: Counter = Counter()


def hook(name: str) -> None:
    seen[name] += 1
    label = f"{name}#{seen[name]}"
    print(f"STAGE {label}", flush=True)
    if label == opts.target:
        print("STOPPED", flush=True)
        sys.stdin.readline()  # the parent sends SIGKILL now


app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
commands.register(app)
store.set_stage_hook(hook)
with fake_registry_steps(fail=[m for m in opts.fail.split(",") if m], delay=opts.delay):
    code = run_app(app, opts.argv)
sys.exit(code)

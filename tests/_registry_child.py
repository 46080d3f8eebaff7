"""Child process of the crash tests: runs a registry command and reports every stage it reaches.

Usage: ``python _registry_child.py TARGET ARGS...``. Each stage the workflow reports through
``medunlearn.registry.store.stage`` is printed as ``STAGE name#k`` (k counts repeats of a name).
On reaching ``TARGET`` the child prints ``STOPPED`` and waits on stdin until the parent kills it
(``-`` never stops), so a kill lands exactly at a stage, whatever the machine's load.
"""

import sys
from collections import Counter

from medunlearn.registry import store
from medunlearn.registry.__main__ import main

target, argv = sys.argv[1], sys.argv[2:]
seen: Counter = Counter()


def hook(name: str) -> None:
    seen[name] += 1
    label = f"{name}#{seen[name]}"
    print(f"STAGE {label}", flush=True)
    if label == target:
        print("STOPPED", flush=True)
        sys.stdin.readline()  # the parent sends SIGKILL now


store.set_stage_hook(hook)
sys.exit(main(argv))

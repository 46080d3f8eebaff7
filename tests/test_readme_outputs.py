"""The README's examples write only into ignored folders: following them leaves the checkout
clean (``git status`` shows no untracked files)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTPUT_OPTIONS = ("--out", "-o", "--request")


def example_outputs(readme: str) -> list[str]:
    """Every path a README bash example writes (``--out``, ``--request``, ``echo ... > FILE``)
    or hands to a command as a file it made (``patients:FILE``), inside the checkout."""
    paths = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if not line:
                continue
            argv = shlex.split(line)
            if ">" in argv:
                paths.append(argv[argv.index(">") + 1])
            if argv[0] != "medunlearn":
                continue
            paths += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OUTPUT_OPTIONS]
            paths += [a.split(":", 1)[1] for a in argv
                      if re.match(r"(patients|hashes|indices):", a)]
    return [p for p in paths if not p.startswith(("..", "/", "$"))]


def test_readme_examples_write_into_ignored_folders():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = example_outputs((REPO / "README.md").read_text())
    # the examples of training, unlearning, deletion requests and certificates are all found
    for expected in ("runs/pneu", "runs/forget.txt", "runs/registry", "runs/request.json",
                     "runs/certificate/"):
        assert expected in paths
    for p in paths:
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", p], cwd=REPO)
        assert ignored.returncode == 0, f"the README example writes {p}, which git does not ignore"

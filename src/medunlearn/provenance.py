"""Code version and machine facts recorded next to every artefact."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from medunlearn import __version__


def now_iso(timespec: str = "seconds") -> str:
    """The current UTC time in ISO 8601 (``timespec`` as :meth:`datetime.isoformat`: run
    folders and results tables record seconds, the registry's ledger milliseconds)."""
    return datetime.now(UTC).isoformat(timespec=timespec)


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Return the git commit of the source tree this package runs from, or ``None``.

    A ``-dirty`` suffix marks uncommitted changes, so a result can be traced to exact code.
    """
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out + ("-dirty" if dirty else "") if out else None


def environment() -> dict:
    """Versions and machine facts that influence numeric results."""
    import numpy as np
    import torch

    return {
        "medunlearn": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }

"""Ray, the optional parallel backend: imported on demand, started with the environment the
workers need, shut down by whoever started it (experiment grids and ``verify-forgetting``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from medunlearn.errors import MedUnlearnError


class RayUnavailableError(MedUnlearnError):
    """``--backend ray`` was asked for but Ray is not installed."""


def import_ray():
    """The ``ray`` module.

    Raises:
        RayUnavailableError: Ray is not installed (the message says how to install it).
    """
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            "The Ray backend needs the 'ray' package: pip install 'medunlearn[ray]' (or "
            "pip install ray), or run without --backend ray.") from None
    return ray


def forwarded_env() -> dict[str, str]:
    """Environment variables workers need (data location, caches)."""
    return {k: v for k, v in os.environ.items()
            if k.startswith(("MEDMNIST_", "MEDUNLEARN_")) or k in ("OMP_NUM_THREADS",)}


def start(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start (or attach to) Ray unless it runs already; True when this call started it (the
    caller then shuts it down). ``address``: a cluster (``auto``, ``ray://host:10001``);
    without it a local Ray with ``num_cpus`` CPUs (default: all)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs = {"runtime_env": {"env_vars": forwarded_env()}, "log_to_driver": False,
              "include_dashboard": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    elif num_cpus is not None:
        ray.init(num_cpus=num_cpus, **kwargs)
    else:
        ray.init(**kwargs)
    return True


@contextlib.contextmanager
def running(address: str | None = None, num_cpus: int | None = None) -> Iterator[object]:
    """Ray, running for the block (started and shut down here unless it ran already)."""
    ray = import_ray()
    started = start(address, num_cpus)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


__all__ = ["RayUnavailableError", "forwarded_env", "import_ray", "running", "start"]

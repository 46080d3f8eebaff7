"""Run experiment jobs as Ray tasks (a local Ray on this machine, or a cluster).

Workers only build run folders and log files and return rows; the driver alone writes the
SQLite results table, so the table never sees concurrent writers. The runner dispatches jobs in
phases (originals, references, cells), so no two tasks ever build the same folder.

On a cluster (``--ray-address``) every node must see the results folder at the same path
(a shared file system) and have medunlearn installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from medunlearn.errors import MedUnlearnError


class RayUnavailableError(MedUnlearnError):
    """``--backend ray`` was asked for but Ray is not installed."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            "The Ray backend needs the 'ray' package: pip install 'medunlearn[ray]' (or "
            "pip install ray), or run without --backend ray.") from None
    return ray


def _forwarded_env() -> dict[str, str]:
    """Environment variables workers need (data location, caches)."""
    return {k: v for k, v in os.environ.items()
            if k.startswith(("MEDMNIST_", "MEDUNLEARN_")) or k in ("OMP_NUM_THREADS",)}


class RayExecutor:
    """Submit jobs as Ray tasks and yield their outcomes as they finish.

    Args:
        address: A cluster address (``auto``, ``ray://host:10001``); ``None`` starts a local Ray.
        num_cpus: CPUs of the local Ray (ignored with ``address``).
        cpus_per_task: CPUs reserved per task; also the torch thread count of the task.
        threads: torch threads per task (default: ``cpus_per_task``).
        task: The module-level function each call runs as ``task(*args, threads=...)``
            (default: the grid's ``runner.run_job``, whose failures become failed-job rows; a
            failure of any other task is raised in the driver).
    """

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 cpus_per_task: int = 1, threads: int | None = None, task=None) -> None:
        ray = _import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs = {"runtime_env": {"env_vars": _forwarded_env()}, "log_to_driver": False,
                      "include_dashboard": False, "configure_logging": False}
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus, **kwargs)
            self._started = True
        from medunlearn.experiments.runner import run_job

        self._grid = task is None or task is run_job
        self._task = ray.remote(num_cpus=cpus_per_task, max_retries=0)(task or run_job)
        self.threads = threads or cpus_per_task

    def map(self, calls: list[tuple]) -> Iterator[dict]:
        ray = self._ray
        jobs = {self._task.remote(*args, threads=self.threads): args for args in calls}
        pending = list(jobs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        yield ray.get(ref)
                    except Exception as exc:  # the worker died (e.g. out of memory)
                        if not self._grid:
                            raise
                        kind, job, results = jobs[ref][:3]
                        yield {"kind": kind, "key": job.key, "slug": job.slug,
                               "status": "failed", "error": f"Ray task failed: {exc}",
                               "log": f"{results}/logs/{kind}/{job.slug}.log", "seconds": 0.0}
        finally:
            for ref in pending:  # interrupted: do not leave tasks running
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

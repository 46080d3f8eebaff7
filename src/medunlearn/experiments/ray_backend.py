"""Run experiment jobs as Ray tasks (a local Ray on this machine, or a cluster).

Workers only build run folders and log files and return rows; the driver alone writes the
SQLite results table, so the table never sees concurrent writers. The runner dispatches jobs in
phases (originals, references, cells), so no two tasks ever build the same folder.

On a cluster (``--ray-address``) every node must see the results folder at the same path
(a shared file system) and have medunlearn installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from medunlearn import ray_support
from medunlearn.ray_support import RayUnavailableError


class RayExecutor:
    """Submit jobs as Ray tasks and yield their outcomes as they finish.

    Args:
        job: The module-level function each call runs as ``job(*args, threads=...)``: a grid's
            ``runner.run_job``, or one shard's training (``medunlearn.sharding``).
        address: A cluster address (``auto``, ``ray://host:10001``); ``None`` starts a local Ray.
        num_cpus: CPUs of the local Ray (ignored with ``address``).
        cpus_per_task: CPUs reserved per task; also the torch thread count of the task.
        threads: torch threads per task (default: ``cpus_per_task``).
        failures_as_rows: A task that dies (e.g. out of memory) yields a failed-job row of the
            grid (its args are ``(kind, job, results, ...)``); False raises it in the driver.
    """

    def __init__(self, job: Callable[..., dict], *, address: str | None = None,
                 num_cpus: int | None = None, cpus_per_task: int = 1,
                 threads: int | None = None, failures_as_rows: bool = True) -> None:
        self._grid = failures_as_rows
        self._ray = ray_support.import_ray()
        self._started = ray_support.start(address, num_cpus)
        self._task = self._ray.remote(num_cpus=cpus_per_task, max_retries=0)(job)
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


__all__ = ["RayExecutor", "RayUnavailableError"]

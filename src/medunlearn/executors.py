"""Run independent jobs one after another in this process, or as Ray tasks (local or a cluster).

The one executor of experiment grids (one call per grid job, ``experiments.runner``) and of
sharded training (one call per shard, ``medunlearn.sharding``). A task is a module-level
function called as ``task(*args, threads=...)`` that returns a dict; the executor yields the
results (in call order locally, as they finish on Ray).

On a cluster (``ray_address``) every node must see the files the tasks read and write at the
same paths (a shared file system) and have medunlearn installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from medunlearn import ray_support
from medunlearn.errors import ConfigError

BACKENDS = ("local", "ray")

#: What a task that died on Ray (e.g. out of memory) yields instead of raising in the driver:
#: ``on_failure(args, exc)`` of the call's arguments and the exception.
OnFailure = Callable[[tuple, Exception], dict]


class LocalExecutor:
    """Runs the calls one after another in this process."""

    def __init__(self, task: Callable[..., dict], threads: int | None = None) -> None:
        self.task = task
        self.threads = threads

    def map(self, calls: list[tuple]) -> Iterator[dict]:
        for args in calls:
            yield self.task(*args, threads=self.threads)

    def close(self) -> None:
        pass


class RayExecutor:
    """Submit the calls as Ray tasks and yield their results as they finish.

    Args:
        task: The module-level function each call runs as ``task(*args, threads=...)``.
        address: A cluster address (``auto``, ``ray://host:10001``); ``None`` starts a local Ray.
        num_cpus: CPUs of the local Ray (ignored with ``address``).
        cpus_per_task: CPUs reserved per task; also the torch thread count of the task.
        threads: torch threads per task (default: ``cpus_per_task``).
        on_failure: What a task that dies yields (see :data:`OnFailure`); None raises it in the
            driver.
    """

    def __init__(self, task: Callable[..., dict], *, address: str | None = None,
                 num_cpus: int | None = None, cpus_per_task: int = 1,
                 threads: int | None = None, on_failure: OnFailure | None = None) -> None:
        self._on_failure = on_failure
        self._ray = ray_support.import_ray()
        self._started = ray_support.start(address, num_cpus)
        self._task = self._ray.remote(num_cpus=cpus_per_task, max_retries=0)(task)
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
                        if self._on_failure is None:
                            raise
                        yield self._on_failure(jobs[ref], exc)
        finally:
            for ref in pending:  # interrupted: do not leave tasks running
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(backend: str, task: Callable[..., dict], *, ray_address: str | None = None,
                  num_cpus: int | None = None, cpus_per_task: int = 1,
                  threads: int | None = None, on_failure: OnFailure | None = None):
    """An executor running ``task(*args, threads=threads)`` per call (``on_failure``: Ray only).

    Raises:
        ConfigError: ``backend`` is not one of :data:`BACKENDS`.
        RayUnavailableError: ``ray`` asked for but not installed.
    """
    if backend == "local":
        return LocalExecutor(task, threads)
    if backend == "ray":
        return RayExecutor(task, address=ray_address, num_cpus=num_cpus,
                           cpus_per_task=cpus_per_task, threads=threads, on_failure=on_failure)
    raise ConfigError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")


__all__ = ["BACKENDS", "LocalExecutor", "OnFailure", "RayExecutor", "make_executor"]

"""Progress reporting: a tqdm bar on a terminal, plain periodic lines in logs and pipes.

A tqdm bar written to a file or a pipe leaves one carriage-return-separated line per refresh
(a 76 KB log of 59 lines); when standard error is not a terminal, :func:`progress_bar` prints
a plain line at every tenth of the work instead (``retrain: 40/100 steps (40%), 12 s, ~18 s
left``).
"""

from __future__ import annotations

import sys
import time


class PlainProgress:
    """A tqdm-compatible subset (``update``, ``set_postfix``, ``close``) printing plain lines."""

    def __init__(self, total: int, desc: str, unit: str, every: float = 0.1, stream=None) -> None:
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.n = 0
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.step = max(1, int(self.total * every)) if self.total else 0
        self.next = self.step
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n >= self.next:
            while self.next <= self.n:
                self.next += self.step
            self._line()

    def set_postfix(self, **kwargs) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def _line(self) -> None:
        el = time.perf_counter() - self.t0
        pct = 100 * self.n / self.total
        left = el * (self.total - self.n) / self.n if self.n else 0.0
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({pct:.0f}%), {el:.0f} s, "
              f"~{left:.0f} s left{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, *, enabled: bool = True, unit: str = "step"):
    """A progress display for ``total`` units: off, a tqdm bar (terminal) or plain lines."""
    if not enabled:
        return _Off()
    stream = sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, unit=unit)
    return PlainProgress(total, desc, unit, stream=stream)


__all__ = ["PlainProgress", "progress_bar"]

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
    """A tqdm-compatible subset (``update``, ``set_postfix``, ``set_postfix_str``, ``write``,
    ``close``) printing plain lines."""

    def __init__(self, total: int, desc: str, unit: str, every: float = 0.1, stream=None,
                 initial: int = 0) -> None:
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.n = int(initial)
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.step = max(1, int(self.total * every)) if self.total else 0
        self.next = self.step
        while self.step and self.next <= self.n:
            self.next += self.step
        self.start = self.n  # units done before this run (resumed work): not in the rate
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n >= self.next:
            while self.next <= self.n:
                self.next += self.step
            self._line()

    def set_postfix(self, **kwargs) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _line(self) -> None:
        el = time.perf_counter() - self.t0
        pct = 100 * self.n / self.total
        done = self.n - self.start
        left = el * (self.total - self.n) / done if done else 0.0
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

    def set_postfix_str(self, text: str) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, *, enabled: bool = True, unit: str = "step",
                 initial: int = 0, leave: bool = False):
    """A progress display for ``total`` units: off, a tqdm bar (terminal) or plain lines."""
    if not enabled:
        return _Off()
    stream = sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=leave, unit=unit,
                    dynamic_ncols=True)
    return PlainProgress(total, desc, unit, stream=stream, initial=initial)


__all__ = ["PlainProgress", "progress_bar"]

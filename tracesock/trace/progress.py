"""A progress bar on stderr for long reads (``stats``, ``analyze``), as tqdm draws one.

Only on a terminal: the callers make one when stderr is a TTY, never in pipes or tests.
A bar with ``after_s`` draws nothing until that long has passed, so a read that ends
sooner shows no bar at all; it redraws at most ten times a second.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class ProgressBar:
    """A one-line bar on a terminal: ``analyze  [#####.....]  52%``."""

    def __init__(self, total: int, out: TextIO, width: int = 30, label: str = "analyze",
                 after_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = max(total, 1)
        self.out = out
        self.width = width
        self.label = label
        self.after_s = after_s
        self.clock = clock
        self.started = clock()
        self.drawn_at = float("-inf")
        self.shown = False

    def __call__(self, done: int) -> None:
        if self.after_s:
            now = self.clock()
            if now - self.started < self.after_s or now - self.drawn_at < 0.1:
                return
            self.drawn_at = now
        frac = min(done / self.total, 1.0)
        filled = int(frac * self.width)
        self.out.write(f"\r{self.label}  [{'#' * filled}{'.' * (self.width - filled)}] "
                       f"{frac * 100:3.0f}%")
        self.out.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.out.write("\r" + " " * (self.width + len(self.label) + 12) + "\r")
            self.out.flush()


def terminal_bar(total: int, label: str, after_s: float = 2.0) -> ProgressBar | None:
    """A bar on stderr when it is a terminal, drawn once a read has taken ``after_s``."""
    if not sys.stderr.isatty():
        return None
    return ProgressBar(total, sys.stderr, label=label, after_s=after_s)

"""Progress reporting: library code calls ``progress(stage, done, total)``; the CLI draws it."""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

ProgressFn = Callable[[str, int, int], None]


def noop(stage: str, done: int, total: int) -> None:
    """A progress function that shows nothing (the library default)."""


class TerminalProgress:
    """A one-line bar per stage on stderr, redrawn at most 10× a second and ended with a newline.

    When stderr is not a terminal (CI logs) only each stage's final line is written.
    """

    def __init__(self, stream: Optional[TextIO] = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self._stage: Optional[str] = None
        self._started = 0.0
        self._last_draw = 0.0
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage != self._stage:
            self._stage, self._started, self._last_draw = stage, now, 0.0
        finished = total > 0 and done >= total
        if not finished and (not self._interactive or now - self._last_draw < 0.1):
            return
        self._last_draw = now
        share = done / total if total else 1.0
        filled = int(round(share * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"\r{stage:<22} [{bar}] {done}/{total} {now - self._started:6.1f}s"
        self.stream.write(line + ("\n" if finished else ""))
        self.stream.flush()

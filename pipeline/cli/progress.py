"""A byte-based progress bar on stderr, for terminals only (never in pipes or logs)."""

from __future__ import annotations

import sys
import time

_MIN_BYTES = 8 << 20  # small inputs finish before a bar is worth drawing


class Progress:
    __slots__ = ("_done", "_drawn", "_enabled", "_last", "_total")

    def __init__(self, total_bytes: int, *, enabled: bool) -> None:
        self._total = total_bytes
        self._enabled = enabled and total_bytes >= _MIN_BYTES
        self._done = 0
        self._last = 0.0
        self._drawn = False

    def advance(self, n: int) -> None:
        self._done += n
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        frac = min(1.0, self._done / self._total)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r[{bar:<30}] {frac * 100:5.1f}% {self._done >> 20} MiB")
        sys.stderr.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()

"""Logging set-up shared by the command-line tools."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable


def setup(level: str = "INFO", prefix: str = "") -> None:
    """Timestamped lines on stderr; `prefix` names the process (agent id, coordinator)."""
    fmt = f"%(asctime)s {prefix + ' ' if prefix else ''}%(levelname)s %(message)s"
    logging.basicConfig(
        level=level.upper(), format=fmt, datefmt="%H:%M:%S", stream=sys.stderr, force=True
    )
    logging.getLogger("grpc").setLevel(logging.WARNING)


class Throttled:
    """One kind of log line (a refusal of bad input) at most `burst` times per `window_s`:
    a hostile client sending thousands of bad messages must not fill the disk with log.
    The first line after a quiet window says how many were left out."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 20,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self._burst, self._window_s, self._clock = logger, burst, window_s, clock
        self._lock = threading.Lock()
        self._start = -window_s
        self._count = self._suppressed = 0

    def warning(self, msg: str, *args: object) -> None:
        with self._lock:
            now = self._clock()
            left_out = 0
            if now - self._start >= self._window_s:
                left_out, self._suppressed = self._suppressed, 0
                self._start, self._count = now, 0
            self._count += 1
            if self._count > self._burst:
                self._suppressed += 1
                return
        if left_out:
            self._log.warning(
                "(%d similar lines left out in the last %.0f s)", left_out, self._window_s
            )
        self._log.warning(msg, *args)

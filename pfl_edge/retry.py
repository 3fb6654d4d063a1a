"""Retry with exponential backoff and full jitter: the one helper every reconnect uses."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from pfl_edge.constants import RETRY_INITIAL_SECONDS, RETRY_MAX_SECONDS

T = TypeVar("T")


def backoff_delays(
    initial: float = RETRY_INITIAL_SECONDS,
    maximum: float = RETRY_MAX_SECONDS,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Endless delays: uniform in [0, min(maximum, initial * 2**attempt)]."""
    r = rng or random.Random()
    attempt = 0
    while True:
        yield r.uniform(0.0, min(maximum, initial * 2**attempt))
        attempt += 1


def retry(
    fn: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    deadline_s: float | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
    delays: Iterator[float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn` until it returns; on `retry_on` wait the next backoff delay.

    The last error is raised once `deadline_s` (from the first call) would be passed.
    """
    start = time.monotonic()
    waits = delays or backoff_delays()
    while True:
        try:
            return fn()
        except retry_on as exc:
            delay = next(waits)
            if deadline_s is not None and time.monotonic() - start + delay > deadline_s:
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            sleep(delay)

"""What the engine publishes after each round: an immutable `Snapshot` of the run's
progress and the strategy's inspection matrices, and the `Board` that holds the latest.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.strategies.base import Inspection

log = logging.getLogger("pfl_edge.coordinator")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""Inspection names: they become file names and URL path segments."""


@dataclass(frozen=True)
class Snapshot:
    """The coordinator's state as the HTTP endpoint and the inspection files see it.

    Built on the engine thread and never changed afterwards: `inspections` is a read-only
    mapping of immutable `Inspection`s, so any thread may read it without a lock.
    """

    run_id: str
    algorithm: str
    round: int
    """Last completed round (0 before the first)."""
    rounds: int
    """Rounds of the run."""
    agents: int
    """Agents registered (ever, this run)."""
    connected: int
    finished: bool
    inspections: Mapping[str, Inspection]
    inspections_round: int
    """The round after which `inspections` were taken."""
    time: float

    def status(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "algorithm": self.algorithm,
            "round": self.round,
            "rounds": self.rounds,
            "agents": self.agents,
            "connected": self.connected,
            "finished": self.finished,
            "inspections": sorted(self.inspections),
            "time": self.time,
        }


class Board:
    """The latest snapshot: the engine thread publishes, any thread reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: Snapshot | None = None

    def publish(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._latest = snapshot

    def latest(self) -> Snapshot | None:
        with self._lock:
            return self._latest


def usable(name: str) -> bool:
    if NAME_PATTERN.match(name):
        return True
    log.warning("inspection %r skipped: names must match %s", name, NAME_PATTERN.pattern)
    return False

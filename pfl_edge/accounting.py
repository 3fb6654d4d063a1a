"""Byte accounting: every frame counted at the serialized level, with the transport's
own per-message header, per agent, round, direction and message kind."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Direction = Literal["up", "down"]
"""up: agent to coordinator; down: coordinator to agent."""


@dataclass(frozen=True)
class Key:
    agent_id: str
    round: int
    direction: Direction
    kind: str


@dataclass
class Count:
    bytes: int = 0
    messages: int = 0
    frames: int = 0


class ByteMeter:
    """Thread-safe counters of wire bytes; both sides keep one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Key, Count] = defaultdict(Count)

    def record(
        self,
        agent_id: str,
        round_: int,
        direction: Direction,
        kind: str,
        nbytes: int,
        frames: int = 1,
    ) -> None:
        with self._lock:
            c = self._counts[Key(agent_id, round_, direction, kind)]
            c.bytes += nbytes
            c.messages += 1
            c.frames += frames

    def snapshot(self) -> dict[Key, Count]:
        with self._lock:
            return {k: Count(v.bytes, v.messages, v.frames) for k, v in self._counts.items()}

    def total(
        self,
        *,
        agent_id: str | None = None,
        round_: int | None = None,
        direction: Direction | None = None,
        kinds: Iterable[str] | None = None,
    ) -> int:
        """Sum of bytes over the records matching every given filter."""
        wanted = set(kinds) if kinds is not None else None
        with self._lock:
            return sum(
                c.bytes
                for k, c in self._counts.items()
                if (agent_id is None or k.agent_id == agent_id)
                and (round_ is None or k.round == round_)
                and (direction is None or k.direction == direction)
                and (wanted is None or k.kind in wanted)
            )

    def rows(self) -> list[dict[str, object]]:
        """One dict per (agent, round, direction, kind), for reports and storage."""
        return [
            {
                "agent_id": k.agent_id,
                "round": k.round,
                "direction": k.direction,
                "kind": k.kind,
                "bytes": c.bytes,
                "messages": c.messages,
                "frames": c.frames,
            }
            for k, c in sorted(
                self.snapshot().items(),
                key=lambda kv: (kv[0].round, kv[0].agent_id, kv[0].direction, kv[0].kind),
            )
        ]

    def load_rows(self, rows: Iterable[dict[str, object]]) -> None:
        """Restore counters written by `rows` (coordinator restart)."""
        with self._lock:
            for r in rows:
                key = Key(
                    str(r["agent_id"]),
                    int(str(r["round"])),
                    _direction(r["direction"]),
                    str(r["kind"]),
                )
                c = self._counts[key]
                c.bytes += int(str(r["bytes"]))
                c.messages += int(str(r["messages"]))
                c.frames += int(str(r["frames"]))


def _direction(value: object) -> Direction:
    if value == "up":
        return "up"
    if value == "down":
        return "down"
    raise ValueError(f"direction must be 'up' or 'down', got {value!r}")

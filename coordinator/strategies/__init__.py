"""Coordinator halves of the algorithms, one module each, registered by name."""

from __future__ import annotations

from coordinator.strategies.base import Strategy
from pfl_edge.registry import discover, lookup


def available() -> dict[str, type[Strategy]]:
    return discover(__name__, Strategy)


def get(name: str) -> type[Strategy]:
    return lookup(__name__, Strategy, name)

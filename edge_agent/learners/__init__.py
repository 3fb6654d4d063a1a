"""Agent halves of the algorithms, one module each, registered by name."""

from __future__ import annotations

from edge_agent.learners.base import Learner
from pfl_edge.registry import discover, lookup


def available() -> dict[str, type[Learner]]:
    return discover(__name__, Learner)


def get(name: str) -> type[Learner]:
    return lookup(__name__, Learner, name)

"""Coordinator half of an algorithm.

A round is a sequence of phases. In each phase the strategy gives every participating
agent an `Instruction` (an action name, named tensors, scalar params); the agents'
learners answer with a `Reply`; when the phase closes (all answered, or the deadline
passed with a quorum) the strategy gets the replies and returns the next phase's
instructions, or None when the round is over. The strategy never sees a transport; the
vocabulary (AgentInfo, Instruction, Reply, Gather) is the round core's
(pfl_edge.core.messages), re-exported here for strategies.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pfl_edge.core.messages import AgentInfo, Gather, Instruction, Reply
from pfl_edge.values import Scalar

__all__ = [
    "AgentInfo",
    "Gather",
    "Inspection",
    "Instruction",
    "Reply",
    "RunContext",
    "Strategy",
    "expect_tensor",
]


@dataclass(frozen=True)
class RunContext:
    """What a strategy knows about the run at construction."""

    params: Mapping[str, Scalar]
    num_classes: int
    public_count: int
    """Public samples selected per round (rows of a soft-prediction upload)."""
    seed: int


@dataclass(frozen=True)
class Inspection:
    """A named matrix of the strategy's state, for people to look at (KT-pFL's c).

    Immutable: the matrix is copied to a read-only float64 array and the labels to
    tuples, so it can be handed to other threads (the coordinator's HTTP endpoint).
    """

    matrix: np.ndarray
    rows: Sequence[str]
    """Label of each row (agent ids for agent-by-agent matrices)."""
    columns: Sequence[str]
    description: str = ""
    """What an entry means, e.g. "c[m, n]: weight of teacher m (row) for student n"."""
    row_title: str = "row"
    column_title: str = "column"
    """Axis titles of the heatmap."""

    def __post_init__(self) -> None:
        matrix = np.array(self.matrix, dtype=np.float64)
        rows, columns = tuple(map(str, self.rows)), tuple(map(str, self.columns))
        if matrix.shape != (len(rows), len(columns)):
            raise ValueError(
                f"inspection matrix has shape {list(matrix.shape)} for "
                f"{len(rows)} row and {len(columns)} column labels"
            )
        matrix.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "columns", columns)


class Strategy(abc.ABC):
    """Subclass, set `name` (and `params` for algorithm-specific settings), and put the
    module in coordinator/strategies/: it is registered by name on import."""

    name: ClassVar[str]
    params: ClassVar[dict[str, Scalar]] = {}
    """Algorithm-specific parameters and their defaults (added to pfl_edge.params.COMMON)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def begin_round(self, round_: int, agents: Sequence[AgentInfo]) -> dict[str, Instruction]:
        """Instructions of phase 0 for the agents sampled this round."""

    @abc.abstractmethod
    def end_phase(
        self, round_: int, phase: int, replies: Mapping[str, Reply]
    ) -> dict[str, Instruction] | None:
        """Take a closed phase's replies; the next phase's instructions or None (round done).

        `replies` holds only the agents that answered in time.
        """

    def validate(self, round_: int, phase: int, agent: AgentInfo, reply: Reply) -> None:
        """Raise `Rejection` when a reply cannot be used (wrong tensors, shapes).

        Called before a reply is accepted; the run's state must not change here.
        Tensors are already checked to be finite. The default accepts every reply.
        """
        return None

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to resume after a restart (arrays; scalars as 0-d arrays)."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what `state` returned (the default keeps no state)."""
        return None

    def summary(self) -> dict[str, float]:
        """A few numbers about the strategy's own state for the round's report."""
        return {}

    def inspect(self) -> dict[str, Inspection]:
        """Named matrices of the strategy's state after the last completed round (the
        coordinator saves them each round, draws them and serves them over HTTP); the
        default has none. Called on the engine thread only."""
        return {}


def expect_tensor(reply: Reply, name: str, shape: tuple[int, ...], *, agent_id: str) -> np.ndarray:
    """The named tensor of a reply with exactly `shape`, or a Rejection saying what differs."""
    from pfl_edge import errors

    arr = reply.tensors.get(name)
    if arr is None:
        raise errors.invalid(
            f"{reply.action} reply of {agent_id} lacks tensor {name!r} "
            f"(got {sorted(reply.tensors)})"
        )
    if arr.shape != shape:
        raise errors.invalid(
            f"{reply.action} reply of {agent_id}: tensor {name!r} has shape {list(arr.shape)}, "
            f"expected {list(shape)}"
        )
    return arr

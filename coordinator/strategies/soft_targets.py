"""Shared shape of the soft-prediction methods (FedMD, KT-pFL and its variants).

Round: phase 0 `train_predict` (local epochs, then soft predictions on the round's
public batch, uploaded as `soft`); phase 1 `distill` (each agent gets its own target
`target` and distils towards it). Subclasses only say how targets are formed;
`WeightedTargets` forms them from a teacher-by-student weight matrix recomputed each round.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.strategies import ktpfl_math as km
from coordinator.strategies.base import (
    AgentInfo,
    Inspection,
    Instruction,
    Reply,
    RunContext,
    Strategy,
    expect_tensor,
)
from pfl_edge import errors
from pfl_edge.codec import WireFormat

TRAIN_PREDICT = "train_predict"
DISTILL = "distill"

PROBABILITY_TOLERANCE = 0.05
"""Row sums of uploaded probabilities may differ from 1 by this much (int8 wire: 1/255 steps)."""


class SoftTargetStrategy(Strategy, abc.ABC):
    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.agents: dict[str, AgentInfo] = {}

    def begin_round(self, round_: int, agents: Sequence[AgentInfo]) -> dict[str, Instruction]:
        self.agents.update({a.agent_id: a for a in agents})
        return {a.agent_id: Instruction(TRAIN_PREDICT) for a in agents}

    def end_phase(
        self, round_: int, phase: int, replies: Mapping[str, Reply]
    ) -> dict[str, Instruction] | None:
        if phase == 0:
            soft = {a: r.tensors["soft"].astype(np.float32) for a, r in replies.items()}
            if not soft:
                return None
            wire = self._wire()
            return {
                a: Instruction(DISTILL, {"target": t}, wire=wire)
                for a, t in self.targets(round_, soft).items()
            }
        self.after_distill(round_, replies)
        return None

    @abc.abstractmethod
    def targets(self, round_: int, soft: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each answering agent's distillation target from everyone's soft predictions."""

    def after_distill(self, round_: int, replies: Mapping[str, Reply]) -> None:
        """Hook after the distillation phase (KT-pFL updates its coefficients here)."""

    def validate(self, round_: int, phase: int, agent: AgentInfo, reply: Reply) -> None:
        if phase != 0:
            return
        shape = (self.ctx.public_count, self.ctx.num_classes)
        soft = expect_tensor(reply, "soft", shape, agent_id=agent.agent_id)
        expect_probabilities(soft, agent.agent_id)

    def _wire(self) -> WireFormat:
        wire = str(self.ctx.params["wire"])
        assert wire in ("float32", "float16", "int8")
        return wire  # type: ignore[return-value]


@dataclass(frozen=True)
class Mixed:
    """What formed the latest targets: answering agents, their predictions (k, R, C) as
    distributions, and the weights (k, k) that mixed them."""

    ids: list[str]
    soft: np.ndarray
    weights: np.ndarray


class WeightedTargets(SoftTargetStrategy, abc.ABC):
    """t_n = sum_m w[m, n] s_m over the answering agents (KT-pFL, Sim-pFL, TopK-pFL);
    `inspect` shows the latest w."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.mixed: Mixed | None = None

    @abc.abstractmethod
    def weights(self, ids: Sequence[str], soft: np.ndarray) -> np.ndarray:
        """(k, k) weights for agents `ids` with predictions `soft` (k, R, C); column n
        weighs student n's teachers."""

    def targets(self, round_: int, soft: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = list(soft)
        stacked = km.as_distributions(np.stack([soft[a] for a in ids]))
        w = self.weights(ids, stacked)
        self.mixed = Mixed(ids, stacked, w)
        t = km.mixture(w, stacked)
        return {a: t[i] for i, a in enumerate(ids)}

    def inspect(self) -> dict[str, Inspection]:
        """{"w": the latest weights, agent ids as teacher rows and student columns}."""
        if self.mixed is None:
            return {}
        w, ids = self.mixed.weights, self.mixed.ids
        return {
            "w": Inspection(
                w,
                ids,
                ids,
                f"{self.name} weights w[m, n] of the latest round: weight of teacher m (row) in "
                "the soft target of student n (column); columns sum to 1",
                row_title="teacher m",
                column_title="student n (column: weights of its teachers)",
            )
        }


def expect_probabilities(soft: np.ndarray, agent_id: str) -> None:
    """Refuse rows that are not probability vectors (negative, or not summing to 1)."""
    if soft.size and (soft.min() < -PROBABILITY_TOLERANCE):
        raise errors.invalid(f"soft predictions of {agent_id} have negative values")
    sums = soft.sum(axis=1, dtype=np.float64)
    bad = np.abs(sums - 1.0) > PROBABILITY_TOLERANCE
    if bad.any():
        row = int(np.argmax(bad))
        raise errors.invalid(
            f"soft predictions of {agent_id}: row {row} sums to {sums[row]:.4f}, not 1 "
            "(send softmax outputs, not logits)"
        )

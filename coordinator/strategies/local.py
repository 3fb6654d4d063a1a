"""Local training only: no knowledge leaves the device (the lower baseline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from coordinator.strategies.base import AgentInfo, Instruction, Reply, Strategy

TRAIN = "train"


class Local(Strategy):
    name = "local"

    def begin_round(self, round_: int, agents: Sequence[AgentInfo]) -> dict[str, Instruction]:
        return {a.agent_id: Instruction(TRAIN) for a in agents}

    def end_phase(
        self, round_: int, phase: int, replies: Mapping[str, Reply]
    ) -> dict[str, Instruction] | None:
        return None

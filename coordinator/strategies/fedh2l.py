"""FedH2L (decentralised mutual learning): the coordinator aggregates nothing, it relays.

Round: phase 0 `predict` (each agent uploads `soft`, its posteriors softmax(z/T) on the
round's public batch, from its model as the previous round left it); phase 1 `learn`
(each agent gets `peers`, the other answering agents' posteriors stacked in agent-id
order as ((P * batch), classes), and trains cross-entropy on its private data plus
`mutual_lambda` times the mean over peers of KL(p_peer || p_self) on that batch).

The relay is a mailbox, so it works over gRPC and MQTT alike; each agent's download grows
with the number of peers. A direct agent-to-agent exchange over the broker's
pfl/<run>/peers/ topics (the coordinator then only keeping the round clock) is not built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, cast

import numpy as np

from coordinator.strategies.base import AgentInfo, Instruction, Reply, Strategy, expect_tensor
from coordinator.strategies.soft_targets import expect_probabilities
from pfl_edge.codec import WireFormat
from pfl_edge.values import Scalar

PREDICT = "predict"
LEARN = "learn"


class FedH2L(Strategy):
    """FedH2L: agents learn from their peers' posteriors; the coordinator only relays them."""

    name = "fedh2l"
    params: ClassVar[dict[str, Scalar]] = {"mutual_lambda": 1.0}

    def begin_round(self, round_: int, agents: Sequence[AgentInfo]) -> dict[str, Instruction]:
        return {a.agent_id: Instruction(PREDICT) for a in agents}

    def end_phase(
        self, round_: int, phase: int, replies: Mapping[str, Reply]
    ) -> dict[str, Instruction] | None:
        if phase != 0:
            return None
        soft = {a: r.tensors["soft"].astype(np.float32) for a, r in sorted(replies.items())}
        wire = cast(WireFormat, self.ctx.params["wire"])  # checked by pfl_edge.params
        instructions = {}
        for agent in soft:
            others = [s for a, s in soft.items() if a != agent]
            tensors = {"peers": np.concatenate(others)} if others else {}
            instructions[agent] = Instruction(LEARN, tensors, wire=wire)
        return instructions

    def validate(self, round_: int, phase: int, agent: AgentInfo, reply: Reply) -> None:
        if phase != 0:
            return
        shape = (self.ctx.public_count, self.ctx.num_classes)
        expect_probabilities(
            expect_tensor(reply, "soft", shape, agent_id=agent.agent_id), agent.agent_id
        )

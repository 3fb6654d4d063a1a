"""FedH2L (decentralised mutual learning): the coordinator aggregates nothing.

Round: phase 0 `predict` (each agent shares `soft`, its posteriors softmax(z/T) on the
round's public batch, from its model as the previous round left it); phase 1 `learn`
(each agent gets `peers`, the other answering agents' posteriors stacked in agent-id
order as ((P * batch), classes), and trains cross-entropy on its private data plus
`mutual_lambda` times the mean over peers of KL(p_peer || p_self) on that batch).

The strategy only says what is shared and gathered (`Instruction.share`/`gather`); the
engine picks the route per round. When every agent of the round is on MQTT, agents
publish their posteriors to each other on the broker's pfl/<run>/peers/ topics and the
coordinator only keeps the round clock (its traffic is a few hundred bytes per agent).
Otherwise (any agent on gRPC) the coordinator relays them as a mailbox. Either way each
agent's download grows with the number of peers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, cast

from coordinator.strategies.base import (
    AgentInfo,
    Gather,
    Instruction,
    Reply,
    Strategy,
    expect_tensor,
)
from coordinator.strategies.soft_targets import expect_probabilities
from pfl_edge.codec import WireFormat
from pfl_edge.values import Scalar

PREDICT = "predict"
LEARN = "learn"
SOFT = "soft"
PEERS = "peers"


class FedH2L(Strategy):
    """FedH2L: agents learn from their peers' posteriors, which the coordinator never mixes."""

    name = "fedh2l"
    params: ClassVar[dict[str, Scalar]] = {"mutual_lambda": 1.0}

    def begin_round(self, round_: int, agents: Sequence[AgentInfo]) -> dict[str, Instruction]:
        return {a.agent_id: Instruction(PREDICT, share=SOFT) for a in agents}

    def end_phase(
        self, round_: int, phase: int, replies: Mapping[str, Reply]
    ) -> dict[str, Instruction] | None:
        if phase != 0:
            return None
        answered = sorted(replies)
        wire = cast(WireFormat, self.ctx.params["wire"])  # checked by pfl_edge.params
        instructions = {}
        for agent in answered:
            others = tuple(a for a in answered if a != agent)
            gather = Gather(PEERS, SOFT, others) if others else None
            instructions[agent] = Instruction(LEARN, wire=wire, gather=gather)
        return instructions

    def validate(self, round_: int, phase: int, agent: AgentInfo, reply: Reply) -> None:
        if phase != 0 or SOFT not in reply.tensors:  # exchanged directly: the agents check it
            return
        shape = (self.ctx.public_count, self.ctx.num_classes)
        expect_probabilities(
            expect_tensor(reply, SOFT, shape, agent_id=agent.agent_id), agent.agent_id
        )

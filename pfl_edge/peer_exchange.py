"""Direct agent-to-agent exchange of tensors: what the coordinator and the agents agree on.

A strategy marks a reply tensor as shared with the other agents (`Instruction.share`)
and later asks for a tensor gathered from several agents' shared tensors
(`Instruction.gather`). Where every agent of the round sits on a transport that reaches
the other agents (MQTT: the broker's pfl/<run>/peers/ topics), the coordinator does not
relay: it marks the Task with the reserved params below, the agent publishes the shared
tensor to its peers and sends the coordinator a Result without it; the next Task names
the agents whose tensors to gather, and the agent runtime assembles the tensor from what
its peers published. Otherwise the coordinator keeps the replies and sends the gathered
tensor itself (mailbox). Learners see the same TaskView either way: the runtime strips
the reserved params.

A peer message is an Envelope (sender's agent id, run id, round) with a Result body:
phase and action of the task answered, the shared tensor, and metric `EXCHANGE` naming
the exchange (a round restarted after a missed quorum opens a new one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pfl_edge.values import Scalar

PREFIX = "pfl."
"""Task params, Result tensors and metrics under this prefix belong to the framework."""

SHARE = "pfl.share"
"""Task param: name of the reply tensor to publish to the peers instead of uploading it."""
EXCHANGE = "pfl.exchange"
"""Task param (with SHARE and with GATHER) and peer-message metric: the exchange's id."""
GATHER = "pfl.gather"
"""Task param: name of the tensor to assemble from peer messages."""
GATHER_SOURCE = "pfl.gather.source"
"""Task param: name of the shared tensor in the peer messages."""
GATHER_AGENTS = "pfl.gather.agents"
"""Task param: the agents to gather from, comma-separated, in concatenation order."""
GATHER_WAIT_S = "pfl.gather.wait_s"
"""Task param: how long the agent waits for missing peer messages before using those present."""
GATHERED = "pfl.gathered"
"""Result tensor (uint8, one per gathered agent, in order): 1 where that agent's tensor
was used, 0 where it was missing or unusable."""

PEER_KIND = "peer"
"""Message kind of peer traffic in a ByteMeter."""

BYTES_UP = "peer_bytes_up"
BYTES_DOWN = "peer_bytes_down"
TENSOR_BYTES_UP = "peer_tensor_bytes_up"
TENSOR_BYTES_DOWN = "peer_tensor_bytes_down"
METRICS = (BYTES_UP, BYTES_DOWN, TENSOR_BYTES_UP, TENSOR_BYTES_DOWN)
"""Result metrics: the agent's peer traffic of the round so far (wire bytes as its meter
counts them, MQTT headers and PUBACKs included; tensor content bytes), which never
passes the coordinator."""


@dataclass(frozen=True)
class GatherSpec:
    """A gather as it travels in Task params."""

    name: str
    source: str
    agents: tuple[str, ...]
    exchange: int
    wait_s: float

    def params(self) -> dict[str, Scalar]:
        return {
            GATHER: self.name,
            GATHER_SOURCE: self.source,
            GATHER_AGENTS: ",".join(self.agents),
            EXCHANGE: self.exchange,
            GATHER_WAIT_S: self.wait_s,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Scalar]) -> GatherSpec | None:
        """The spec in `params`, None where there is none; ValueError when malformed."""
        if GATHER not in params:
            return None
        try:
            agents = str(params[GATHER_AGENTS])
            return cls(
                name=str(params[GATHER]),
                source=str(params[GATHER_SOURCE]),
                agents=tuple(a for a in agents.split(",") if a),
                exchange=int(params[EXCHANGE]),
                wait_s=float(params[GATHER_WAIT_S]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed gather params: {exc!r}") from None


def split_params(
    params: Mapping[str, Scalar],
) -> tuple[dict[str, Scalar], dict[str, Scalar]]:
    """(the learner's params, the framework's params under PREFIX)."""
    own = {k: v for k, v in params.items() if not k.startswith(PREFIX)}
    framework = {k: v for k, v in params.items() if k.startswith(PREFIX)}
    return own, framework

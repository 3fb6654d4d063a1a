"""What the coordinator half of an algorithm, the round core and the fleets pass around.

A round is a sequence of phases. In each phase every participating agent gets an
`Instruction` (an action name, named tensors, scalar params); its learner answers with
a `Reply`. These types carry no transport: the coordinator encodes them into protobuf
Tasks and decodes Results back into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pfl_edge.codec import WireFormat
from pfl_edge.values import Scalar


@dataclass(frozen=True)
class AgentInfo:
    agent_id: str
    architecture: str
    parameter_count: int
    num_train_samples: int
    num_classes: int
    input_shape: tuple[int, ...] = ()
    """The model's input (C, H, W); () where a stored registration predates it."""


@dataclass(frozen=True)
class Gather:
    """Task tensor `name` = the concatenation (first axis), in this order, of tensor
    `source` of `agents`' replies to the previous phase, whose instructions shared it."""

    name: str
    source: str
    agents: tuple[str, ...]


@dataclass
class Instruction:
    action: str
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, Scalar] = field(default_factory=dict)
    wire: WireFormat | None = None
    """Encoding for float tensors; None keeps float32."""
    share: str | None = None
    """Name of a reply tensor the next phase gathers. Where the agents reach each other
    (all on MQTT) they exchange it directly and the reply reaching `validate` and
    `end_phase` lacks it (the gathering agents check it); otherwise the coordinator keeps
    it as a mailbox and the reply must hold it."""
    gather: Gather | None = None
    """A tensor assembled from other agents' shared tensors (by them or by the coordinator)."""


@dataclass
class Reply:
    action: str
    tensors: dict[str, np.ndarray]
    metrics: dict[str, float]

"""The agent's side of peer exchange (pfl_edge.peer_exchange): tensors that go agent to
agent. `PeerExchange` publishes what a task shares, keeps what the peers publish (across
reconnects) and gathers it for a task, and counts this agent's peer traffic by round.
Each method takes the session's transport; without one, or over a transport without
peer exchange, nothing is published or received."""

from __future__ import annotations

import logging
import time

import numpy as np

from pfl_edge import codec
from pfl_edge import peer_exchange as px
from pfl_edge.accounting import ByteMeter, Direction
from pfl_edge.errors import Rejection
from pfl_edge.framing import Message
from pfl_edge.transport.base import ClientTransport
from pfl_edge.v1 import messages_pb2 as pb

log = logging.getLogger("pfl_edge.agent")


class PeerExchange:
    """One agent's peer exchange state and steps."""

    def __init__(self, agent_id: str, run_id: str, meter: ByteMeter) -> None:
        self.agent_id = agent_id
        self.run_id = run_id
        self.meter = meter
        self.sent: dict[tuple[int, int], Message] = {}
        """What this agent published to its peers, by (round, phase), to publish again."""
        self.messages: dict[tuple[int, str], Message] = {}
        """What peers published, by (exchange, sender); kept across reconnects."""
        self.shared_shapes: dict[tuple[int, str], tuple[int, tuple[int, ...]]] = {}
        """(round, shape) of what this agent shared, by (exchange, name): peers' must match."""
        self.tensor_bytes: dict[int, list[int]] = {}
        """Tensor content bytes exchanged with peers, [up, down] by round."""

    def share(
        self,
        t: ClientTransport,
        env: pb.Envelope,
        name: str,
        exchange: int,
        out: dict[str, np.ndarray],
        wire: str,
    ) -> None:
        """Publish reply tensor `name` of the task in `env` to the other agents and take
        it out of `out`."""
        if name not in out or not t.supports_peer_exchange:
            log.error(
                "round %d: cannot share %r with the peers (%s)",
                env.round,
                name,
                "the learner did not return it" if name in out else f"{t.name} cannot",
            )
            return
        array = out.pop(name)
        blobs: codec.Blobs = []
        tensors = codec.encode_many({name: array}, wire, blobs)  # type: ignore[arg-type]
        result = pb.Result(
            phase=env.task.phase,
            action=env.task.action,
            tensors=tensors,
            metrics={px.EXCHANGE: float(exchange)},
        )
        msg = Message(
            pb.Envelope(agent_id=self.agent_id, run_id=self.run_id, round=env.round, result=result),
            blobs,
        )
        self.sent[(env.round, env.task.phase)] = msg
        self.shared_shapes[(exchange, name)] = (env.round, array.shape)
        self._tensor_bytes(env.round)[0] += sum(codec.encoded_bytes(x, blobs) for x in tensors)
        t.send_to_peers(msg)

    def share_again(self, t: ClientTransport, key: tuple[int, int]) -> None:
        """Publish again what the task of (round, phase) `key` shared, if anything."""
        shared = self.sent.get(key)
        if shared is not None:
            t.send_to_peers(shared)

    def take(self, t: ClientTransport | None, rnd: int, timeout_s: float = 0.0) -> None:
        """Move what peers sent from the transport into `messages` (waiting up to
        `timeout_s` for the first), and forget the exchanges of rounds before `rnd - 1`."""
        if t is not None and t.supports_peer_exchange:
            msg = t.recv_peer(timeout_s)
            while msg is not None:
                self._keep(msg)
                msg = t.recv_peer(0)
        for k in [k for k, m in self.messages.items() if m.envelope.round + 1 < rnd]:
            del self.messages[k]
        for r in [r for r in self.tensor_bytes if r + 1 < rnd]:
            del self.tensor_bytes[r]
        for k in [k for k, (r, _) in self.shared_shapes.items() if r + 1 < rnd]:
            del self.shared_shapes[k]

    def _keep(self, msg: Message) -> None:
        env = msg.envelope
        exchange = env.result.metrics.get(px.EXCHANGE)
        self._tensor_bytes(env.round)[1] += sum(
            codec.encoded_bytes(x, msg.blobs) for x in env.result.tensors
        )
        if exchange is None:
            log.warning("dropped a message of peer %s: it names no exchange", env.agent_id)
            return
        self.messages[(int(exchange), env.agent_id)] = msg

    def gather(
        self, t: ClientTransport | None, rnd: int, spec: px.GatherSpec
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """The tensor a gather asks for from the peers' messages (waiting up to its
        `wait_s` for missing ones), and one flag per agent of the gather: 1 where used."""
        deadline = time.monotonic() + spec.wait_s
        while t is not None and t.supports_peer_exchange:
            missing = [a for a in spec.agents if (spec.exchange, a) not in self.messages]
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                break
            self.take(t, rnd, min(left, 1.0))
        own = self.shared_shapes.get((spec.exchange, spec.source))
        reference = None if own is None else own[1]
        parts, used = [], np.zeros(len(spec.agents), np.uint8)
        for i, agent in enumerate(spec.agents):
            msg = self.messages.get((spec.exchange, agent))
            if msg is None:
                log.warning("round %d: no %r from peer %s in time", rnd, spec.source, agent)
                continue
            try:
                arrays = codec.decode_many(
                    msg.envelope.result.tensors, msg.blobs, require_finite=True
                )
            except Rejection as r:
                log.warning("round %d: unusable %r from peer %s: %s", rnd, spec.source, agent, r)
                continue
            arr = arrays.get(spec.source)
            if arr is None or arr.ndim == 0 or (reference is not None and arr.shape != reference):
                got = "nothing" if arr is None else f"shape {list(arr.shape)}"
                log.warning(
                    "round %d: peer %s sent %s as %r%s",
                    rnd,
                    agent,
                    got,
                    spec.source,
                    "" if reference is None else f", expected shape {list(reference)}",
                )
                continue
            reference = arr.shape
            parts.append(arr)
            used[i] = 1
        return (np.concatenate(parts) if parts else None), used

    def _tensor_bytes(self, rnd: int) -> list[int]:
        return self.tensor_bytes.setdefault(rnd, [0, 0])

    def metrics(self, rnd: int) -> dict[str, float]:
        """This agent's peer traffic of round `rnd` so far, for the coordinator's report."""

        def wire(direction: Direction) -> float:
            return float(
                self.meter.total(
                    agent_id=self.agent_id,
                    round_=rnd,
                    direction=direction,
                    kinds=[px.PEER_KIND],
                )
            )

        up, down = self._tensor_bytes(rnd)
        return {
            px.BYTES_UP: wire("up"),
            px.BYTES_DOWN: wire("down"),
            px.TENSOR_BYTES_UP: float(up),
            px.TENSOR_BYTES_DOWN: float(down),
        }

"""What every transport provides, and what the coordinator gives a server transport.

A server transport delivers each whole message (envelope and blobs) from an agent to
an `Inbound` and sends messages to agents by id; a client transport is one agent's
duplex link.
Both count every frame in a `ByteMeter` at the serialized level plus their own
per-message header. Neither looks inside a Task or Result.
"""

from __future__ import annotations

import abc
import queue
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from pfl_edge.accounting import ByteMeter, Direction
from pfl_edge.framing import Message, Received, kind_of
from pfl_edge.v1 import messages_pb2 as pb


class TransportClosed(Exception):
    """The link is gone. `code` is a pfl_edge.v1.ErrorCode when the peer refused us."""

    def __init__(self, reason: str, code: int = pb.ERROR_CODE_UNSPECIFIED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code

    @property
    def refused(self) -> bool:
        """True when the peer rejected a message, as opposed to a lost connection."""
        return self.code != pb.ERROR_CODE_UNSPECIFIED


@dataclass(frozen=True)
class Identity:
    """What a transport proved about the sender of a link before any message: the agent
    id of its client certificate (mutual TLS) and that certificate's sha256 fingerprint."""

    agent_id: str
    cert_sha256: str


@dataclass(frozen=True)
class ServerLimits:
    """What a server transport grants a link before and after it has registered."""

    register_timeout_s: float = 10.0
    """A link that has not registered within this is closed."""
    transfer_timeout_s: float = 300.0
    """A chunked message must arrive completely within this."""
    max_connections: int = 4096
    """Concurrent links."""
    max_inflight_bytes: int = 1 << 30
    """Incomplete chunked messages of all links together (each link: one message at most)."""


DEFAULT_LIMITS = ServerLimits()

PRE_REGISTER_FRAME_BYTES = 64 << 10
"""Largest frame a link may send before it has registered (a Register is ~100 bytes);
chunked transfers need a registered link, so nothing is allocated for a stranger."""


class Inbound(Protocol):
    """The coordinator side of a server transport."""

    def on_message(
        self, peer: str | None, msg: Message, identity: Identity | None = None
    ) -> Future[list[Message]]:
        """Handle one message from an agent.

        `peer` is the agent id the transport has established for the sender (the
        registered stream on gRPC, the topic on MQTT) or None before registration;
        `identity`, where the transport has one, what its handshake proved (a Register
        must name the same agent).
        The future yields the replies to send back on the same link, or raises
        `Rejection` saying why the envelope was refused. It is resolved in the
        coordinator's thread; a transport must queue the replies from a done-callback
        (which runs there, at once) so that they leave before anything the coordinator
        sends the agent afterwards, and bind a registering link to its agent id there.
        """
        ...

    def on_disconnect(self, agent_id: str, reason: str) -> None:
        """The agent's link is gone (stream closed, last will)."""
        ...


class ServerTransport(abc.ABC):
    """Coordinator end: serves many agents."""

    name: str
    supports_peer_exchange: bool = False
    """Whether its agents' client transports reach each other (`ClientTransport.send_to_peers`)."""

    @abc.abstractmethod
    def start(self, inbound: Inbound) -> None: ...

    @abc.abstractmethod
    def send(self, agent_id: str, msg: Message) -> bool:
        """Queue a message for an agent; False when the agent cannot be reached now."""

    @abc.abstractmethod
    def disconnect(self, agent_id: str, code: int, reason: str) -> None:
        """End the agent's link, telling it why (`code`: a pfl_edge.v1.ErrorCode)."""

    @abc.abstractmethod
    def stop(self, grace_s: float = 1.0) -> None: ...

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """Where agents connect, as a URL (grpc://host:port, mqtt://host:port)."""


class ClientTransport(abc.ABC):
    """Agent end: one duplex link to the coordinator, and on some transports to the
    other agents of the run as well (`supports_peer_exchange`)."""

    name: str
    supports_peer_exchange: bool = False

    @abc.abstractmethod
    def connect(self, timeout_s: float) -> None:
        """Open the link; raises TransportClosed when the coordinator cannot be reached."""

    @abc.abstractmethod
    def send(self, msg: Message) -> None:
        """Send one message (its blobs in chunks); raises TransportClosed."""

    @abc.abstractmethod
    def recv(self, timeout_s: float | None) -> Message | None:
        """Next message, or None after `timeout_s`; raises TransportClosed."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def send_to_peers(self, msg: Message) -> None:
        """Send one message to every other agent of the run; the envelope's agent_id must be
        this agent's. Raises TransportClosed; NotImplementedError without peer exchange."""
        raise NotImplementedError(f"{self.name} transport cannot reach other agents")

    def recv_peer(self, timeout_s: float | None) -> Message | None:
        """Next message another agent sent with `send_to_peers` (checked: the envelope's
        agent_id is the authenticated sender's, the run is ours), or None after `timeout_s`."""
        raise NotImplementedError(f"{self.name} transport cannot reach other agents")


class Inbox:
    """What a client transport received, in order; a TransportClosed put here ends the link
    and is raised by every later `get`."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Message | TransportClosed] = queue.Queue()
        self.closed: TransportClosed | None = None

    def put(self, item: Message | TransportClosed) -> None:
        self._queue.put(item)

    def get(self, timeout_s: float | None) -> Message | None:
        """Next message, or None after `timeout_s`; raises the TransportClosed that ended it."""
        if self.closed is not None:
            raise self.closed
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, TransportClosed):
            self.closed = item
            raise item
        return item


def record(meter: ByteMeter, direction: Direction, received: Received) -> None:
    """Count one received message with all its frames."""
    env = received.envelope
    meter.record(
        env.agent_id, env.round, direction, kind_of(env), received.wire_bytes, received.frames
    )


def record_sent(
    meter: ByteMeter, direction: Direction, env: pb.Envelope, wire_bytes: int, frames: int
) -> None:
    meter.record(env.agent_id, env.round, direction, kind_of(env), wire_bytes, frames)

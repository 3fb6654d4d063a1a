"""MQTT server transport: the coordinator's session on the broker. Agents' frames arrive
on their `from` topics, whose agent id (guaranteed by the broker's ACL) is the peer;
replies, and errors for refused messages, go to each agent's inbox. Each start announces
itself on broadcast/coordinator, which makes connected agents register (again).

As on gRPC, one agent's messages reach the Inbound one at a time, in order: the next
is handed over when the previous future is done (never waited for on paho's thread).
After a refusal the agent's further frames are dropped until it registers again, as a
refused gRPC stream reads nothing more.

An offline status (last will, or the agent closing) is reported to the Inbound only if
the agent is not back within `offline_grace_s`: mosquitto publishes every client's will
when it shuts down, and a broker restart must not look like every agent leaving. An
agent that paho brought back after its disconnect was reported gets an Error without
code, which makes it register again as after a lost gRPC stream.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import cast

from google.protobuf.message import DecodeError

from pfl_edge.accounting import ByteMeter
from pfl_edge.errors import Rejection
from pfl_edge.framing import Framer, Message, Reassembler
from pfl_edge.logs import Throttled
from pfl_edge.transport import mqtt_common as mc
from pfl_edge.transport.base import Inbound, ServerTransport, TransportClosed, record, record_sent
from pfl_edge.transport.credentials import DEFAULT_OPTIONS, TransportOptions
from pfl_edge.v1 import messages_pb2 as pb

log = logging.getLogger(__name__)
_refusals = Throttled(log)


@dataclass
class _Peer:
    """What the server keeps per agent; guarded by `lock`."""

    agent_id: str
    reassembler: Reassembler
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: deque[Message] = field(default_factory=deque)
    busy: bool = False
    """A message of this agent is with the Inbound."""
    pumping: bool = False
    """A thread is in `_pump` for this agent."""
    refused: bool = False
    offline: threading.Timer | None = None
    """Reports the disconnect unless cancelled by the agent's return."""
    reported: str = ""
    """Why the Inbound was told this agent is gone ("" while it was not)."""


class MqttServerTransport(ServerTransport):
    name = "mqtt"
    supports_peer_exchange = True
    """Agents on the broker publish to each other on pfl/<run>/peers/ (not read here)."""

    def __init__(
        self,
        host: str,
        port: int,
        meter: ByteMeter,
        *,
        run_id: str = "default",
        options: TransportOptions = DEFAULT_OPTIONS,
        offline_grace_s: float = mc.OFFLINE_GRACE_SECONDS,
        connect_timeout_s: float = 10.0,
    ) -> None:
        """The broker username defaults to "coordinator" when a password is given."""
        self._host, self._port = host, port
        self._meter = meter
        self._run_id = run_id
        self._topics = mc.Topics(run_id)
        self._options = options
        self._framer = Framer(options.chunk_bytes)
        self._credentials = options.credentials.with_default_user(mc.COORDINATOR_USERNAME)
        self._offline_grace_s = offline_grace_s
        self._connect_timeout_s = connect_timeout_s
        self._session: mc.Session | None = None
        self._inbound: Inbound | None = None
        self._peers: dict[str, _Peer] = {}
        self._peers_lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"mqtt://{self._host}:{self._port}"

    def start(self, inbound: Inbound) -> None:
        """Connect to the broker and subscribe; raises RuntimeError when that fails."""
        self._inbound = inbound
        session = mc.Session(
            self._host,
            self._port,
            mc.coordinator_client_id(self._run_id),
            subscriptions=[self._topics.all_frames, self._topics.all_status],
            on_message=self._on_message,
            credentials=self._credentials,
            largest_publish_bytes=mc.packet_limit(self._options.chunk_bytes),
            online=mc.Announcement(
                self._topics.coordinator_presence, mc.status(self._run_id, "", mc.CONNECTED)
            ),
        )
        # Set before open: a resumed session delivers queued messages right away.
        self._session = session
        try:
            session.open(self._connect_timeout_s, fresh=False)
        except TransportClosed as exc:
            self._session = None
            raise RuntimeError(f"MQTT server transport could not start: {exc.reason}") from None
        log.info("MQTT transport of run %s on broker %s", self._run_id, self.address)

    def send(self, agent_id: str, msg: Message) -> bool:
        """Publish to the agent's inbox; True even while it is away (the broker queues)."""
        session = self._session
        if session is None:
            return False
        topic = self._topics.inbox(agent_id)
        raws = list(self._framer.frames(msg))
        try:
            session.publish(topic, *raws)
        except TransportClosed as exc:
            log.error("cannot send %s to agent %s: %s", msg.kind, agent_id, exc.reason)
            return False
        wire = sum(mc.wire_bytes(topic, len(r)) for r in raws)
        record_sent(self._meter, "down", msg.envelope, wire, len(raws))
        return True

    def disconnect(self, agent_id: str, code: int, reason: str) -> None:
        """Send the agent an Error and drop its frames until it registers again (the
        broker keeps its connection: revoking its broker account ends that)."""
        self._refuse(self._peer(agent_id), Rejection(code, reason))

    def stop(self, grace_s: float = 1.0) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        if not session.drain(grace_s):
            log.warning("MQTT server stopping with messages not yet acknowledged by the broker")
        session.close()
        with self._peers_lock:
            peers = list(self._peers.values())
        for peer in peers:
            with peer.lock:
                timer, peer.offline = peer.offline, None
            if timer is not None:
                timer.cancel()

    def _peer(self, agent_id: str) -> _Peer:
        with self._peers_lock:
            peer = self._peers.get(agent_id)
            if peer is None:
                peer = self._peers[agent_id] = _Peer(
                    agent_id, Reassembler(self._options.max_message_bytes)
                )
            return peer

    def _on_message(self, topic: str, payload: bytes) -> None:
        sender = self._topics.sender(topic)
        if sender is None:
            log.warning(
                "ignored a message on %s: not an agent topic of run %s", topic, self._run_id
            )
            return
        agent_id, leaf = sender
        if leaf == "status":
            self._on_status(self._peer(agent_id), payload)
        else:
            self._on_frame(self._peer(agent_id), topic, payload)

    def _on_frame(self, peer: _Peer, topic: str, payload: bytes) -> None:
        try:
            with peer.lock:
                if peer.refused:
                    if not _is_register(payload):
                        log.debug("dropped a frame of refused agent %s", peer.agent_id)
                        return
                    peer.refused = False
                received = peer.reassembler.feed(payload, mc.wire_bytes(topic, len(payload)))
                if received is None:
                    return
                if received.envelope.HasField("register"):
                    peer.reassembler.reset()  # a new connection: earlier transfers are dead
                peer.pending.append(received.message)
        except Rejection as r:
            self._refuse(peer, r)
            return
        record(self._meter, "up", received)
        self._pump(peer)

    def _pump(self, peer: _Peer) -> None:
        """Hand the agent's pending messages to the Inbound, one future at a time."""
        with peer.lock:
            if peer.pumping:
                return
            peer.pumping = True
        assert self._inbound is not None
        while True:
            with peer.lock:
                if peer.busy or not peer.pending:
                    peer.pumping = False
                    return
                msg = peer.pending.popleft()
                peer.busy = True
            try:
                future = self._inbound.on_message(peer.agent_id, msg)
            except Exception as exc:
                future = Future()
                future.set_exception(exc)
            # A future already done runs the callback here; its _pump call returns at once
            # (pumping is set) and this loop takes the next message.
            future.add_done_callback(functools.partial(self._answered, peer))

    def _answered(self, peer: _Peer, future: Future[list[Message]]) -> None:
        try:
            replies = future.result()
        except Rejection as r:
            self._refuse(peer, r)
        except Exception as exc:
            log.exception("coordinator failed on a message of agent %s", peer.agent_id)
            self._refuse(peer, Rejection(pb.ERROR_CODE_INTERNAL, f"coordinator failed: {exc}"))
        else:
            for msg in replies:
                self.send(peer.agent_id, msg)
        with peer.lock:
            peer.busy = False
        self._pump(peer)

    def _refuse(self, peer: _Peer, r: Rejection) -> None:
        _refusals.warning("refused message from agent %s: %s", peer.agent_id, r)
        with peer.lock:
            peer.pending.clear()
            peer.reassembler.reset()
            peer.refused = True
        self._error(peer.agent_id, r.code, r.reason)

    def _error(self, agent_id: str, code: int, message: str) -> None:
        error = pb.Error(code=cast("pb.ErrorCode", code), message=message)
        env = pb.Envelope(agent_id=agent_id, run_id=self._run_id, error=error)
        self.send(agent_id, Message(env))

    def _on_status(self, peer: _Peer, payload: bytes) -> None:
        env = pb.Envelope()
        try:
            env.ParseFromString(payload)
        except DecodeError:
            log.warning(
                "ignored a status of agent %s: %d bytes that are not an Envelope",
                peer.agent_id,
                len(payload),
            )
            return
        state, reason = env.metrics.labels.get("status"), env.metrics.labels.get("reason", "")
        if state == mc.OFFLINE:
            self._offline(peer, reason or "offline")
        elif state in (mc.CONNECTED, mc.RECONNECTED):
            with peer.lock:
                timer, peer.offline = peer.offline, None
                reported, peer.reported = peer.reported, ""
            if timer is not None:
                timer.cancel()
            log.info("agent %s %s", peer.agent_id, state)
            if reported and state == mc.RECONNECTED:
                self._error(
                    peer.agent_id,
                    pb.ERROR_CODE_UNSPECIFIED,
                    f"this agent was reported disconnected ({reported}): register again",
                )
        else:
            log.warning("ignored a status of agent %s: unknown state %r", peer.agent_id, state)

    def _offline(self, peer: _Peer, reason: str) -> None:
        with peer.lock:
            if peer.offline is not None or peer.reported:
                return
            timer = peer.offline = threading.Timer(
                self._offline_grace_s, self._gone, (peer, reason)
            )
        timer.daemon = True
        timer.start()
        log.info(
            "agent %s offline (%s); reported unless back within %.1f s",
            peer.agent_id,
            reason,
            self._offline_grace_s,
        )

    def _gone(self, peer: _Peer, reason: str) -> None:
        with peer.lock:
            # Runs on the timer's own thread: cancelled if the peer no longer holds it.
            if peer.offline is not threading.current_thread():
                return
            peer.offline, peer.reported = None, reason
        assert self._inbound is not None
        self._inbound.on_disconnect(peer.agent_id, reason)


def _is_register(raw: bytes) -> bool:
    frame = pb.Frame()
    try:
        frame.ParseFromString(raw)
    except DecodeError:
        return False
    return frame.envelope.HasField("register")

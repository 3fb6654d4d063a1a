"""MQTT client transport: one agent's session on the broker. It publishes frames on its
`from` topic and reads its inbox; its last will tells the coordinator when it is lost.

paho reconnects by itself (a broker restart included) and the persistent session
delivers what was queued meanwhile, both ways. `recv` raises TransportClosed when the
coordinator refused a message (an Error envelope: `refused`, with its code), when it
reported this agent disconnected meanwhile and asks it to register again (an Error
without code: not `refused`), when a coordinator announces its start (not `refused`:
register again), or when the broker stays out of reach for `reconnect_deadline_s`.

Peer exchange: `send_to_peers` publishes a message, framed and counted as uplink is, on
pfl/<run>/peers/<agent>/frames; every agent of the run subscribes to the others' (No
Local: not its own), reassembles each sender's frames apart, with sizes checked before
allocation, and queues for `recv_peer` only messages whose envelope names the sender of
the topic (authenticated by the broker's ACL) and this run. Anything else is dropped and
logged. Peer traffic is counted as kind `peer` under this agent's id, by the round its
envelope names.
"""

from __future__ import annotations

import logging
import queue
import threading

from google.protobuf.message import DecodeError

from pfl_edge.accounting import ByteMeter
from pfl_edge.errors import Rejection
from pfl_edge.framing import Framer, Message, Reassembler, kind_of
from pfl_edge.peer_exchange import PEER_KIND
from pfl_edge.transport import mqtt_common as mc
from pfl_edge.transport.base import ClientTransport, Inbox, TransportClosed, record, record_sent
from pfl_edge.transport.credentials import DEFAULT_OPTIONS, TransportOptions
from pfl_edge.v1 import messages_pb2 as pb

log = logging.getLogger(__name__)

CLOSE_FLUSH_SECONDS = 2.0
"""How long `close` waits for the broker to acknowledge what is still in flight."""


class MqttClientTransport(ClientTransport):
    name = "mqtt"
    supports_peer_exchange = True

    def __init__(
        self,
        host: str,
        port: int,
        meter: ByteMeter,
        *,
        agent_id: str,
        run_id: str = "default",
        options: TransportOptions = DEFAULT_OPTIONS,
        reconnect_deadline_s: float = mc.RECONNECT_DEADLINE_SECONDS,
    ) -> None:
        """The broker username defaults to the agent id when a password is given."""
        self._host, self._port = host, port
        self._meter = meter
        self._agent_id = mc.check_id("agent", agent_id)
        self._run_id = run_id
        topics = mc.Topics(run_id)
        self._frames_topic = topics.frames_from(agent_id)
        self._status_topic = topics.status_of(agent_id)
        self._inbox_topic = topics.inbox(agent_id)
        self._presence_topic = topics.coordinator_presence
        self._topics = topics
        self._peer_topic = topics.peer_frames(agent_id)
        self._all_peers_topic = topics.all_peer_frames
        self._options = options
        self._framer = Framer(options.chunk_bytes)
        self._credentials = options.credentials.with_default_user(agent_id)
        self._reconnect_deadline_s = reconnect_deadline_s
        self._session: mc.Session | None = None
        self._resume = False
        self._inbox = Inbox()
        self._reassembler = Reassembler(self._options.max_message_bytes)
        self._peer_reassemblers: dict[str, Reassembler] = {}
        self._peer_inbox: queue.Queue[Message] = queue.Queue()
        self._give_up: threading.Timer | None = None
        self._give_up_lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"mqtt://{self._host}:{self._port}"

    def connect(self, timeout_s: float) -> None:
        """Open the session: a fresh one the first time, afterwards the one left behind
        (with what the broker queued for it)."""
        self.close()
        self._inbox = Inbox()
        for reassembler in (self._reassembler, *self._peer_reassemblers.values()):
            reassembler.reset()  # keeps the ids of messages completed: repeats stay dropped
        session = mc.Session(
            self._host,
            self._port,
            mc.agent_client_id(self._run_id, self._agent_id),
            subscriptions=[self._inbox_topic, self._presence_topic, self._all_peers_topic],
            on_message=self._on_message,
            no_local=[self._all_peers_topic],
            credentials=self._credentials,
            largest_publish_bytes=mc.packet_limit(self._options.chunk_bytes),
            will=self._status(mc.OFFLINE, "connection to the broker lost (last will)"),
            online=self._status(mc.CONNECTED),
            back_online=self._status(mc.RECONNECTED),
            on_up=self._cancel_give_up,
            on_down=self._link_down,
        )
        # Set before open: a resumed session delivers queued messages right away.
        self._session = session
        try:
            session.open(timeout_s, fresh=not self._resume)
        except TransportClosed:
            self._session = None
            raise
        self._resume = True

    def send(self, msg: Message) -> None:
        session = self._session
        if self._inbox.closed is not None or session is None:
            raise self._inbox.closed or TransportClosed("not connected")
        raws = list(self._framer.frames(msg))
        session.publish(self._frames_topic, *raws)
        wire = sum(mc.wire_bytes(self._frames_topic, len(r)) for r in raws)
        record_sent(self._meter, "up", msg.envelope, wire, len(raws))

    def send_to_peers(self, msg: Message) -> None:
        session = self._session
        if self._inbox.closed is not None or session is None:
            raise self._inbox.closed or TransportClosed("not connected")
        env = msg.envelope
        if env.agent_id != self._agent_id:
            raise ValueError(f"agent {self._agent_id} cannot send for {env.agent_id!r}")
        raws = list(self._framer.frames(msg))
        session.publish(self._peer_topic, *raws)
        wire = sum(mc.wire_bytes(self._peer_topic, len(r)) for r in raws)
        self._meter.record(self._agent_id, env.round, "up", PEER_KIND, wire, len(raws))

    def recv_peer(self, timeout_s: float | None) -> Message | None:
        try:
            return self._peer_inbox.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def send_raw(self, payload: bytes) -> None:
        """Publish bytes on the frames topic as one message, unchecked (for tests of bad input)."""
        if self._session is None:
            raise TransportClosed("not connected")
        self._session.publish(self._frames_topic, payload)

    def recv(self, timeout_s: float | None) -> Message | None:
        return self._inbox.get(timeout_s)

    def close(self) -> None:
        """Tell the coordinator this agent is leaving, flush, and disconnect."""
        self._cancel_give_up()
        session, self._session = self._session, None
        if session is None:
            return
        if session.connected:
            closing = self._status(mc.OFFLINE, "the agent closed its transport")
            session.publish(closing.topic, closing.payload)
            session.drain(CLOSE_FLUSH_SECONDS)
        session.close()

    def _status(self, state: str, reason: str = "") -> mc.Announcement:
        return mc.Announcement(
            self._status_topic, mc.status(self._run_id, self._agent_id, state, reason)
        )

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self._presence_topic:
            self._on_presence(payload)
            return
        if topic != self._inbox_topic:
            self._on_peer(topic, payload)
            return
        try:
            received = self._reassembler.feed(payload, mc.wire_bytes(topic, len(payload)))
        except Rejection as r:
            self._inbox.put(TransportClosed(f"bad frame from coordinator: {r}"))
            return
        if received is None:
            return
        record(self._meter, "down", received)
        env = received.envelope
        if not env.HasField("error"):
            self._inbox.put(received.message)
        elif env.error.code == pb.ERROR_CODE_UNSPECIFIED:
            self._inbox.put(TransportClosed(env.error.message))
        else:
            refusal = Rejection(env.error.code, env.error.message)
            self._inbox.put(TransportClosed(f"coordinator refused: {refusal}", env.error.code))

    def _on_peer(self, topic: str, payload: bytes) -> None:
        sender = self._topics.peer_sender(topic)
        if sender is None or sender == self._agent_id:
            log.warning(
                "ignored %d bytes on %s: not another agent's peer topic", len(payload), topic
            )
            return
        reassembler = self._peer_reassemblers.get(sender)
        if reassembler is None:
            reassembler = self._peer_reassemblers[sender] = Reassembler(
                self._options.max_message_bytes
            )
        try:
            received = reassembler.feed(payload, mc.wire_bytes(topic, len(payload)))
        except Rejection as r:
            log.warning("dropped a frame from peer %s: %s", sender, r)
            return
        if received is None:
            return
        env = received.envelope
        self._meter.record(
            self._agent_id, env.round, "down", PEER_KIND, received.wire_bytes, received.frames
        )
        if env.agent_id != sender or env.run_id != self._run_id or kind_of(env) != "result":
            log.warning(
                "dropped a message from peer %s: a %s of agent %r in run %r (expected a result "
                "of %s in run %r)",
                sender,
                kind_of(env),
                env.agent_id,
                env.run_id,
                sender,
                self._run_id,
            )
            return
        self._peer_inbox.put(received.message)

    def _on_presence(self, payload: bytes) -> None:
        env = pb.Envelope()
        try:
            env.ParseFromString(payload)
        except DecodeError:
            log.warning(
                "ignored %d bytes on %s: not an Envelope", len(payload), self._presence_topic
            )
            return
        if env.metrics.labels.get("status") == mc.CONNECTED:
            self._inbox.put(
                TransportClosed(f"the coordinator of run {self._run_id} started: register again")
            )

    def _link_down(self, reason: str, code: int) -> None:
        inbox = self._inbox
        if code != pb.ERROR_CODE_UNSPECIFIED:
            inbox.put(TransportClosed(reason, code))
            return
        closed = TransportClosed(
            f"{reason}; not re-established within {self._reconnect_deadline_s:g} s"
        )
        with self._give_up_lock:
            if self._give_up is None:
                self._give_up = threading.Timer(self._reconnect_deadline_s, inbox.put, (closed,))
                self._give_up.daemon = True
                self._give_up.start()

    def _cancel_give_up(self) -> None:
        with self._give_up_lock:
            timer, self._give_up = self._give_up, None
        if timer is not None:
            timer.cancel()

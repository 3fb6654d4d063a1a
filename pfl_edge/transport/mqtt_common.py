"""What the MQTT server and client share: topic layout, id rules, session settings, the
per-message sizes counted in byte accounting, and `Session`, one paho client.

Topic layout (`<run>` and `<agent>` pass `check_id`):

    pfl/<run>/from/<agent>/frames   agent -> coordinator: Frames
    pfl/<run>/from/<agent>/status   agent -> coordinator: online marker, offline, last will
    pfl/<run>/to/<agent>/frames     coordinator -> agent: Frames (an Error envelope too)
    pfl/<run>/broadcast/coordinator coordinator -> every agent: `connected` status
    pfl/<run>/broadcast/<name>      coordinator -> every agent (other names reserved)
    pfl/<run>/peers/<agent>/frames  agent -> every other agent: Frames (peer exchange)
    pfl/<run>/peers/<agent>/<name>  agent -> every other agent (other names reserved)

The broker's ACL (deploy/mosquitto/acl) lets an agent, whose username is its id, write
only under from/<agent>/ and peers/<agent>/ and read only to/<agent>/, broadcast/ and
peers/: the agent id in a `from` or `peers` topic is authenticated, and is the sender's
identity. The coordinator does not subscribe to peers/: what agents exchange there (a
tensor a strategy shares, see pfl_edge.peer_exchange) never passes it; it only keeps
the round clock.

Every message is QoS 1 on an MQTT 5 session that outlives the connection (clean start
off, `SESSION_EXPIRY_SECONDS`), so what is published while a side is away is queued by
the broker and delivered when it is back, a broker restart included (with persistence).

A status payload is an Envelope with the agent's ids whose Metrics label `status` is
`connected` (after `connect`), `reconnected` (after paho reconnected by itself) or
`offline` (label `reason` says why: the last will, or the agent closing its transport).

The coordinator publishes a `connected` status (no agent id) on broadcast/coordinator
each time its transport starts. Agents take it as "register again": a Register published
before the coordinator's first subscription reached nobody, and a restarted coordinator
has to learn which agents are there. A broker restart does not publish it (paho's
reconnects of the same process are not starts).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import ParamSpec

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from pfl_edge.constants import (
    CHUNK_BYTES,
    KEEPALIVE_SECONDS,
    MAX_CHUNK_FRAME_BYTES,
    RETRY_MAX_SECONDS,
)
from pfl_edge.retry import retry
from pfl_edge.transport.base import TransportClosed
from pfl_edge.transport.credentials import Credentials
from pfl_edge.v1 import messages_pb2 as pb

log = logging.getLogger(__name__)
_P = ParamSpec("_P")

ROOT = "pfl"
QOS = 1
COORDINATOR_USERNAME = "coordinator"
"""Broker username of the coordinator when a password is given without one."""

MAX_ID_CHARS = 64
_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ID_CHARS - 1}}}")

SESSION_EXPIRY_SECONDS = 3600
"""How long the broker keeps a departed side's session and queue."""

OFFLINE_GRACE_SECONDS = 5.0
"""An offline status counts only if the agent is not back online within this time."""

RECONNECT_DEADLINE_SECONDS = 120.0
"""An agent's link counts as lost when paho has not reconnected within this time."""

RECONNECT_MIN_SECONDS = 1
RECONNECT_MAX_SECONDS = int(RETRY_MAX_SECONDS)
"""paho's reconnect backoff (whole seconds), capped like pfl_edge.retry."""

FRAME_SLACK_BYTES = MAX_CHUNK_FRAME_BYTES - CHUNK_BYTES
"""Room above the chunk size for a frame's own header."""

MAX_TOPIC_BYTES = len(f"{ROOT}//peers//frames") + 2 * MAX_ID_CHARS
"""Longest topic a frame is published on."""

PUBACK_BYTES = 4
"""A PUBACK with reason Success and no properties: type, length, packet id (MQTT 5
lets both sides leave out the reason code then; paho and mosquitto do)."""

_REFUSALS = {
    0x84: pb.ERROR_CODE_FAILED_PRECONDITION,  # unsupported protocol version
    0x85: pb.ERROR_CODE_INVALID_ARGUMENT,  # client identifier not valid
    0x86: pb.ERROR_CODE_UNAUTHENTICATED,  # bad user name or password
    0x87: pb.ERROR_CODE_UNAUTHENTICATED,  # not authorized (mosquitto: also a bad password)
    0x8A: pb.ERROR_CODE_PERMISSION_DENIED,  # banned
    0x8C: pb.ERROR_CODE_UNAUTHENTICATED,  # bad authentication method
    0x95: pb.ERROR_CODE_RESOURCE_EXHAUSTED,  # packet too large
}
"""CONNACK reasons that retrying cannot fix (others, e.g. server busy, are retried)."""


def check_id(kind: str, value: str) -> str:
    """`value` if it can be a topic level, client id part and broker username; else ValueError."""
    if not _ID.fullmatch(value):
        raise ValueError(
            f"{kind} id {value!r} cannot be used over MQTT: use 1 to {MAX_ID_CHARS} letters, "
            "digits, '.', '_' or '-', starting with a letter or digit (no '/', '+', '#')"
        )
    return value


@dataclass(frozen=True)
class Topics:
    """The topics of one run."""

    run_id: str

    def __post_init__(self) -> None:
        check_id("run", self.run_id)

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.run_id}"

    def frames_from(self, agent_id: str) -> str:
        return f"{self.prefix}/from/{check_id('agent', agent_id)}/frames"

    def status_of(self, agent_id: str) -> str:
        return f"{self.prefix}/from/{check_id('agent', agent_id)}/status"

    def inbox(self, agent_id: str) -> str:
        return f"{self.prefix}/to/{check_id('agent', agent_id)}/frames"

    def broadcast(self, name: str) -> str:
        return f"{self.prefix}/broadcast/{check_id('broadcast', name)}"

    @property
    def coordinator_presence(self) -> str:
        """Where the coordinator announces each start."""
        return self.broadcast("coordinator")

    def peers(self, agent_id: str, name: str) -> str:
        return f"{self.prefix}/peers/{check_id('agent', agent_id)}/{check_id('peers', name)}"

    def peer_frames(self, agent_id: str) -> str:
        """Where an agent publishes frames for the other agents."""
        return self.peers(agent_id, "frames")

    @property
    def all_peer_frames(self) -> str:
        """Subscription: every agent's frames for the other agents."""
        return f"{self.prefix}/peers/+/frames"

    def peer_sender(self, topic: str) -> str | None:
        """The agent id of a peers/<agent>/frames topic of this run, else None."""
        parts = topic.split("/")
        if (
            len(parts) != 5
            or parts[:3] != [ROOT, self.run_id, "peers"]
            or parts[4] != "frames"
            or not _ID.fullmatch(parts[3])
        ):
            return None
        return parts[3]

    @property
    def all_frames(self) -> str:
        """Subscription: every agent's frames."""
        return f"{self.prefix}/from/+/frames"

    @property
    def all_status(self) -> str:
        """Subscription: every agent's status."""
        return f"{self.prefix}/from/+/status"

    def sender(self, topic: str) -> tuple[str, str] | None:
        """(agent id, "frames" or "status") of a `from` topic of this run, else None."""
        parts = topic.split("/")
        if (
            len(parts) != 5
            or parts[:3] != [ROOT, self.run_id, "from"]
            or parts[4] not in ("frames", "status")
            or not _ID.fullmatch(parts[3])
        ):
            return None
        return parts[3], parts[4]


def agent_client_id(run_id: str, agent_id: str) -> str:
    return f"{ROOT}:{check_id('run', run_id)}:agent:{check_id('agent', agent_id)}"


def coordinator_client_id(run_id: str) -> str:
    return f"{ROOT}:{check_id('run', run_id)}:coordinator"


CONNECTED, RECONNECTED, OFFLINE = "connected", "reconnected", "offline"


def status(run_id: str, agent_id: str, state: str, reason: str = "") -> bytes:
    """A status payload (see the module docstring)."""
    labels = {"status": state, "reason": reason} if reason else {"status": state}
    return pb.Envelope(
        agent_id=agent_id, run_id=run_id, metrics=pb.Metrics(labels=labels)
    ).SerializeToString()


def _varint_bytes(n: int) -> int:
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"MQTT remaining length {n} is outside 0..268435455")
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def publish_bytes(topic_bytes: int, payload_bytes: int) -> int:
    """Size of a QoS 1 MQTT 5 PUBLISH without properties: fixed header (type byte and
    remaining-length varint), topic (2-byte length + UTF-8), packet id, property length
    (one 0 byte) and payload."""
    remaining = 2 + topic_bytes + 2 + 1 + payload_bytes
    return 1 + _varint_bytes(remaining) + remaining


def wire_bytes(topic: str, payload_bytes: int) -> int:
    """What one frame costs on one MQTT hop: its PUBLISH and the PUBACK that answers it.

    Both ends count their own hop (agent-broker, broker-coordinator); the broker forwards
    the same packet, so the two counts agree. Connection traffic (CONNECT, SUBSCRIBE,
    PINGREQ, status messages) is not counted, as gRPC's HTTP/2 setup and pings are not.
    """
    return publish_bytes(len(topic.encode()), payload_bytes) + PUBACK_BYTES


def packet_limit(chunk_bytes: int) -> int:
    """Largest PUBLISH a transport with this chunk size sends."""
    return publish_bytes(MAX_TOPIC_BYTES, chunk_bytes + FRAME_SLACK_BYTES)


MAX_PACKET_BYTES = MAX_CHUNK_FRAME_BYTES + 1024
"""The broker's max_packet_size in deploy/mosquitto/mosquitto.conf: a default chunk
frame plus the MQTT header (`packet_limit(CHUNK_BYTES)` stays below it)."""


@dataclass(frozen=True)
class Announcement:
    """A fixed message: the last will, or a status published after each connect."""

    topic: str
    payload: bytes


class Session:
    """One paho client on a persistent MQTT 5 session.

    `open` connects, subscribes and publishes `online`; afterwards paho reconnects by
    itself with backoff, and every later CONNACK re-subscribes and publishes
    `back_online`. The broker publishes `will` when the connection is lost without a
    DISCONNECT. `on_up` runs after each (re)subscription; `on_down(reason, code)` when
    the connection is lost (code UNSPECIFIED: paho reconnects) or the broker refuses a
    reconnect or a message (a pfl_edge.v1.ErrorCode).
    Callbacks run on paho's network thread and must not block; an exception there is
    logged, never raised into paho (it would end the network thread).
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        subscriptions: Sequence[str],
        on_message: Callable[[str, bytes], None],
        no_local: Collection[str] = (),
        credentials: Credentials | None = None,
        largest_publish_bytes: int = 0,
        will: Announcement | None = None,
        online: Announcement | None = None,
        back_online: Announcement | None = None,
        on_up: Callable[[], None] | None = None,
        on_down: Callable[[str, int], None] | None = None,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self._subscriptions = list(subscriptions)
        self._no_local = frozenset(no_local)
        """Subscriptions that do not deliver this client's own publishes (MQTT 5 No Local)."""
        self._on_message = on_message
        self._credentials = credentials or Credentials()
        self._largest_publish_bytes = largest_publish_bytes
        self._will = will
        self._online = online
        self._back_online = back_online
        self._on_up = on_up
        self._on_down = on_down
        self._lock = threading.Condition()
        self._unacked: dict[int, str] = {}
        self._acked_early: dict[int, ReasonCode] = {}
        self._ready = threading.Event()
        self._failure: TransportClosed | None = None
        self._subscribe_mid = -1
        self._closing = False
        self.max_packet_bytes: int | None = None
        """The broker's Maximum Packet Size (CONNACK), None where it sets none."""
        self._client = self._new_client()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def _new_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        client.on_socket_open = _no_delay
        if self._credentials.username is not None:
            client.username_pw_set(self._credentials.username, self._credentials.password)
        if self._credentials.tls is not None:
            tls = self._credentials.tls
            client.tls_set(ca_certs=tls.ca_certs, certfile=tls.certfile, keyfile=tls.keyfile)
        return client

    def open(self, timeout_s: float, *, fresh: bool) -> None:
        """Connect and subscribe within `timeout_s`; raises TransportClosed.

        `fresh` first ends any session this client id left behind (a new process must not
        get messages meant for its predecessor); otherwise the session is resumed.
        """
        deadline = time.monotonic() + timeout_s
        if fresh:
            self._end_old_session(deadline)
        client = self._client
        if self._will is not None:
            client.will_set(self._will.topic, self._will.payload, qos=QOS)
        client.reconnect_delay_set(RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS)
        client.on_connect = _guarded(self._connected)
        client.on_disconnect = _guarded(self._disconnected)
        client.on_subscribe = _guarded(self._subscribed)
        client.on_publish = _guarded(self._published)
        client.on_message = _guarded(self._received)
        client.connect_async(
            self.host,
            self.port,
            int(KEEPALIVE_SECONDS),
            clean_start=False,
            properties=_session_properties(SESSION_EXPIRY_SECONDS),
        )
        client.loop_start()
        self._ready.wait(max(0.0, deadline - time.monotonic()))
        failure = self._failure
        if failure is None and not self._ready.is_set():
            failure = TransportClosed(
                f"MQTT broker at {self.endpoint} not reachable within {timeout_s:g} s"
            )
        limit = self.max_packet_bytes
        if failure is None and limit is not None and self._largest_publish_bytes > limit:
            failure = TransportClosed(
                f"MQTT broker at {self.endpoint} accepts packets of up to {limit} bytes, but "
                f"frames need up to {self._largest_publish_bytes}: lower the chunk size or raise "
                "the broker's max_packet_size",
                pb.ERROR_CODE_FAILED_PRECONDITION,
            )
        if failure is None and self._online is not None:
            self.drain(max(0.0, deadline - time.monotonic()))
            failure = self._failure  # the broker may refuse the online status (ACL)
        if failure is not None:
            self.close()
            raise failure

    def _end_old_session(self, deadline: float) -> None:
        client = self._new_client()
        acks: list[ReasonCode] = []
        client.on_connect = lambda _c, _u, _f, reason, _p: acks.append(reason)

        def attempt() -> None:
            # No Session Expiry Interval: the session ends with this connection.
            client.connect(self.host, self.port, int(KEEPALIVE_SECONDS), clean_start=True)

        try:
            retry(attempt, retry_on=(OSError,), deadline_s=deadline - time.monotonic())
            while not acks and time.monotonic() < deadline:
                client.loop(0.05)
        except OSError as exc:
            raise TransportClosed(f"MQTT broker at {self.endpoint} not reachable: {exc}") from None
        finally:
            client.disconnect()
        if not acks:
            tls = self._credentials.tls
            hint = (
                ": it closed the TLS connection, as a broker does that refuses this client's "
                "certificate (revoked, expired, or not of its CA)"
                if tls is not None and tls.certfile is not None
                else ""
            )
            raise TransportClosed(f"MQTT broker at {self.endpoint} did not answer CONNECT{hint}")
        if acks[0].is_failure:
            raise self._refusal(acks[0]) or TransportClosed(
                f"MQTT broker at {self.endpoint} refused the connection: {acks[0]}"
            )

    def _refusal(self, reason: ReasonCode) -> TransportClosed | None:
        code = _REFUSALS.get(reason.value)
        if code is None:
            return None
        who = self._credentials.username or "anonymous"
        return TransportClosed(
            f"MQTT broker at {self.endpoint} refused {self.client_id} (user {who}): {reason}", code
        )

    def publish(self, topic: str, *payloads: bytes) -> None:
        """Queue QoS 1 messages, in order; paho sends them now or after the next reconnect.

        Raises TransportClosed, before queueing any, when one exceeds the broker's packet
        limit: the broker would drop the connection, and paho resend it after every
        reconnect.
        """
        limit = self.max_packet_bytes
        size = max((publish_bytes(len(topic.encode()), len(p)) for p in payloads), default=0)
        if limit is not None and size > limit:
            raise TransportClosed(
                f"a {size}-byte MQTT packet to {topic} exceeds the broker's limit of {limit} bytes",
                pb.ERROR_CODE_RESOURCE_EXHAUSTED,
            )
        for payload in payloads:
            self._publish(topic, payload)

    def _publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=QOS)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise TransportClosed(f"cannot publish to {topic}: {paho.error_string(info.rc)}")
        with self._lock:
            # on_publish may run before publish() returns; it then leaves its reason here.
            early = self._acked_early.pop(info.mid, None)
            if early is None:
                self._unacked[info.mid] = topic
        if early is not None:
            self._check_ack(topic, early)

    def drain(self, timeout_s: float) -> bool:
        """Wait until the broker acknowledged every publish; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._unacked, timeout_s)

    def close(self) -> None:
        """Disconnect cleanly (no last will) and stop paho's thread."""
        self._closing = True
        client = self._client
        client.disconnect()
        client.loop_stop()
        # Without the cycle through these callbacks paho's __del__ closes its socket pair
        # as soon as the session is dropped.
        client.on_connect = client.on_disconnect = client.on_subscribe = None
        client.on_publish = client.on_message = None

    def _connected(
        self,
        client: paho.Client,
        _userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        if reason.is_failure:
            refusal = self._refusal(reason)
            log.warning("MQTT broker at %s refused %s: %s", self.endpoint, self.client_id, reason)
            if refusal is not None:
                self._fail(refusal)
            return
        self.max_packet_bytes = getattr(props, "MaximumPacketSize", None)
        log.info(
            "%s connected to MQTT broker at %s (session present: %s)",
            self.client_id,
            self.endpoint,
            flags.session_present,
        )
        announce = self._back_online if self._ready.is_set() else self._online
        if self._subscriptions:
            # Always re-subscribe: a broker without persistence forgets the subscriptions.
            _, mid = client.subscribe(
                [
                    (t, SubscribeOptions(QOS, noLocal=t in self._no_local))
                    for t in self._subscriptions
                ]
            )
            self._subscribe_mid = -1 if mid is None else mid
        else:
            self._up()
        if announce is not None:
            self.publish(announce.topic, announce.payload)

    def _subscribed(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [
            f"{t} ({r})" for t, r in zip(self._subscriptions, reasons, strict=False) if r.is_failure
        ]
        if refused:
            self._fail(
                TransportClosed(
                    f"MQTT broker at {self.endpoint} refused subscriptions of {self.client_id}: "
                    + ", ".join(refused),
                    pb.ERROR_CODE_PERMISSION_DENIED,
                )
            )
            return
        self._up()

    def _up(self) -> None:
        self._ready.set()
        if self._on_up is not None:
            self._on_up()

    def _fail(self, failure: TransportClosed) -> None:
        self._failure = failure
        if self._ready.is_set():
            if self._on_down is not None:
                self._on_down(failure.reason, failure.code)
        else:
            self._ready.set()

    def _disconnected(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if self._closing or not self._ready.is_set():
            return
        log.warning(
            "%s lost its connection to the MQTT broker at %s: %s; reconnecting",
            self.client_id,
            self.endpoint,
            reason,
        )
        if self._on_down is not None:
            self._on_down(
                f"connection to the MQTT broker lost: {reason}", pb.ERROR_CODE_UNSPECIFIED
            )

    def _published(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        reason: ReasonCode,
        _props: Properties,
    ) -> None:
        with self._lock:
            topic = self._unacked.pop(mid, None)
            if topic is None:
                self._acked_early[mid] = reason
                return
            # Before waking drain(): open() reads the failure right after.
            self._check_ack(topic, reason)
            self._lock.notify_all()

    def _check_ack(self, topic: str, reason: ReasonCode) -> None:
        if not reason.is_failure:
            return
        who = self._credentials.username or "anonymous"
        code = pb.ERROR_CODE_PERMISSION_DENIED if reason.value == 0x87 else pb.ERROR_CODE_INTERNAL
        failure = TransportClosed(
            f"MQTT broker at {self.endpoint} refused a message of {self.client_id} (user {who}) "
            f"to {topic}: {reason}",
            code,
        )
        log.error("%s", failure.reason)
        self._fail(failure)

    def _received(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        self._on_message(msg.topic, bytes(msg.payload))  # already bytes: no copy


def _session_properties(expiry_s: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry_s
    return props


def _no_delay(_client: paho.Client, _userdata: object, sock: paho.SocketLike) -> None:
    # Without it Nagle's algorithm holds small frames back for a delayed ACK (~40 ms).
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _guarded(fn: Callable[_P, None]) -> Callable[_P, None]:
    """`fn` for paho: an exception is logged, not raised into paho's network thread."""

    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("MQTT callback %s failed", fn.__qualname__)

    return run

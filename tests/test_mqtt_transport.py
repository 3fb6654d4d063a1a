"""The MQTT transport against a real mosquitto: round trips, chunking, byte accounting
checked against the socket, refusals, last will, lost links and a broker restart."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pfl_edge import codec
from pfl_edge.accounting import ByteMeter
from pfl_edge.broker import Broker
from pfl_edge.constants import CHUNK_BYTES
from pfl_edge.errors import Rejection
from pfl_edge.framing import Framer, Message
from pfl_edge.netproxy import CountingProxy, SocketCounts, free_port
from pfl_edge.transport import credentials as cr
from pfl_edge.transport import mqtt_common as mc
from pfl_edge.transport.base import TransportClosed
from pfl_edge.transport.factory import client_for, server_for
from pfl_edge.transport.mqtt_client import MqttClientTransport
from pfl_edge.transport.mqtt_server import MqttServerTransport
from pfl_edge.v1 import messages_pb2 as pb

pytestmark = pytest.mark.timeout(60)

RUN = "run-1"
WAIT_S = 15.0
"""Upper bound of any single wait; a passing test waits far less."""


def echo(peer: str | None, msg: Message) -> list[Message]:
    """Register -> RunConfig (refused when the topic's agent is not the envelope's);
    Result -> a Task carrying the same tensors and blobs; anything else -> nothing."""
    env = msg.envelope
    if env.HasField("register"):
        if peer != env.agent_id:
            raise Rejection(
                pb.ERROR_CODE_PERMISSION_DENIED,
                f"agent {peer!r} may not register as {env.agent_id!r}",
            )
        return [
            Message(
                pb.Envelope(
                    agent_id=env.agent_id, run_id=RUN, run_config=pb.RunConfig(algorithm="echo")
                )
            )
        ]
    if env.HasField("result"):
        task = pb.Task(action="echo", tensors=env.result.tensors)
        return [
            Message(
                pb.Envelope(agent_id=env.agent_id, run_id=RUN, round=env.round, task=task),
                msg.blobs,
            )
        ]
    return []


class RecordingInbound:
    """An Inbound that records what arrives and answers at once with `echo`."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[str | None, Message]] = queue.Queue()
        self.disconnects: queue.Queue[tuple[str, str]] = queue.Queue()

    def on_message(self, peer: str | None, msg: Message) -> Future[list[Message]]:
        self.received.put((peer, msg))
        fut: Future[list[Message]] = Future()
        try:
            fut.set_result(echo(peer, msg))
        except Rejection as r:
            fut.set_exception(r)
        return fut

    def on_disconnect(self, agent_id: str, reason: str) -> None:
        self.disconnects.put((agent_id, reason))

    def next(self) -> tuple[str | None, pb.Envelope]:
        """The next (peer, envelope) that arrived."""
        peer, msg = self.received.get(timeout=WAIT_S)
        return peer, msg.envelope

    def next_message(self) -> Message:
        return self.received.get(timeout=WAIT_S)[1]


class Links:
    """Servers and clients of one test, closed at the end."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.closers: list[Callable[[], None]] = []

    def server(
        self,
        inbound: RecordingInbound | None = None,
        port: int | None = None,
        meter: ByteMeter | None = None,
        offline_grace_s: float = mc.OFFLINE_GRACE_SECONDS,
    ) -> tuple[MqttServerTransport, RecordingInbound]:
        inbound = inbound or RecordingInbound()
        server = MqttServerTransport(
            "127.0.0.1",
            port or self.broker.port,
            meter or ByteMeter(),
            run_id=RUN,
            offline_grace_s=offline_grace_s,
        )
        server.start(inbound)
        self.closers.append(server.stop)
        return server, inbound

    def client(
        self,
        agent_id: str = "agent-a",
        port: int | None = None,
        meter: ByteMeter | None = None,
        reconnect_deadline_s: float = mc.RECONNECT_DEADLINE_SECONDS,
    ) -> MqttClientTransport:
        client = MqttClientTransport(
            "127.0.0.1",
            port or self.broker.port,
            meter or ByteMeter(),
            agent_id=agent_id,
            run_id=RUN,
            reconnect_deadline_s=reconnect_deadline_s,
        )
        self.closers.append(client.close)
        client.connect(WAIT_S)
        return client

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


@pytest.fixture
def links(mosquitto: Broker) -> Iterator[Links]:
    ls = Links(mosquitto)
    try:
        yield ls
    finally:
        ls.close()


def register(agent_id: str = "agent-a", as_: str | None = None) -> Message:
    return Message(
        pb.Envelope(
            agent_id=as_ or agent_id,
            run_id=RUN,
            register=pb.Register(model=pb.ModelInfo(architecture="test", parameter_count=1)),
        )
    )


def envelope(**fields: Any) -> Message:
    return Message(pb.Envelope(run_id=RUN, **fields))


def expect_message(client: MqttClientTransport, kind: str) -> Message:
    msg = client.recv(WAIT_S)
    assert msg is not None, f"no {kind} within {WAIT_S} s"
    assert msg.kind == kind, msg.envelope
    return msg


def expect(client: MqttClientTransport, kind: str) -> pb.Envelope:
    return expect_message(client, kind).envelope


def refusal(client: MqttClientTransport) -> TransportClosed:
    with pytest.raises(TransportClosed) as info:
        client.recv(WAIT_S)
    return info.value


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


def big_result(agent_id: str = "agent-a", nbytes: int = 10 << 20) -> tuple[Message, np.ndarray]:
    """A Result with a 10 MiB float32 tensor, its data in a blob."""
    weights = np.random.default_rng(1).standard_normal(nbytes // 4).astype(np.float32)
    blobs: codec.Blobs = []
    result = pb.Result(action="train", tensors=[codec.encode("w", weights, blobs=blobs)])
    return Message(
        pb.Envelope(agent_id=agent_id, run_id=RUN, round=3, result=result), blobs
    ), weights


def decoded(msg: Message) -> np.ndarray:
    tensors = msg.envelope.result.tensors or msg.envelope.task.tensors
    return codec.decode(tensors[0], msg.blobs)


# Topics, ids and sizes.


@pytest.mark.parametrize("good", ["a", "agent-7", "Edge_01.b", "x" * mc.MAX_ID_CHARS])
def test_valid_ids(good: str) -> None:
    assert mc.check_id("agent", good) == good


@pytest.mark.parametrize(
    "bad", ["", "a/b", "a+", "#", "a b", "$SYS", "-a", ".a", "x" * (mc.MAX_ID_CHARS + 1), "é"]
)
def test_invalid_ids_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(ValueError, match=r"use 1 to 64 letters, digits, '\.', '_' or '-'"):
        mc.check_id("agent", bad)


def test_topic_layout() -> None:
    t = mc.Topics("r1")
    assert t.frames_from("a") == "pfl/r1/from/a/frames"
    assert t.status_of("a") == "pfl/r1/from/a/status"
    assert t.inbox("a") == "pfl/r1/to/a/frames"
    assert t.broadcast("round") == "pfl/r1/broadcast/round"
    assert t.peers("a", "soft") == "pfl/r1/peers/a/soft"
    assert (t.all_frames, t.all_status) == ("pfl/r1/from/+/frames", "pfl/r1/from/+/status")
    assert t.sender("pfl/r1/from/a/frames") == ("a", "frames")
    assert t.sender("pfl/r1/from/a/status") == ("a", "status")
    for other in (
        "pfl/r2/from/a/frames",
        "pfl/r1/to/a/frames",
        "pfl/r1/from/a/x",
        "pfl/r1/from/a/frames/extra",
    ):
        assert t.sender(other) is None
    assert mc.agent_client_id("r1", "a") == "pfl:r1:agent:a"
    assert mc.coordinator_client_id("r1") == "pfl:r1:coordinator"
    with pytest.raises(ValueError, match="run id 'a/b'"):
        mc.Topics("a/b")


@pytest.mark.parametrize(
    ("payload", "varint"),
    [
        (0, 1),
        (127 - 9, 1),
        (128 - 9, 2),
        (16_383 - 9, 2),
        (16_384 - 9, 3),
        (2_097_151 - 9, 3),
        (2_097_152 - 9, 4),
    ],
)
def test_publish_size_follows_the_remaining_length_varint(payload: int, varint: int) -> None:
    # Topic "abcd": remaining = 2 + 4 (topic) + 2 (packet id) + 1 (properties) + payload.
    assert mc.publish_bytes(4, payload) == 1 + varint + 9 + payload
    assert mc.wire_bytes("abcd", payload) == mc.publish_bytes(4, payload) + 4


def test_default_chunks_fit_the_broker_packet_limit() -> None:
    assert mc.packet_limit(CHUNK_BYTES) <= mc.MAX_PACKET_BYTES
    assert mc.packet_limit(2 * CHUNK_BYTES) > mc.MAX_PACKET_BYTES


def test_factory_builds_mqtt_transports() -> None:
    meter = ByteMeter()
    client = client_for("mqtt://broker.example:1884", meter, agent_id="a", run_id="r")
    server = server_for("mqtt://broker.example", meter, run_id="r")
    assert isinstance(client, MqttClientTransport)
    assert isinstance(server, MqttServerTransport)
    assert client.address == "mqtt://broker.example:1884"
    assert server.address == "mqtt://broker.example:1883"
    with pytest.raises(ValueError, match=r"an MQTT broker login; .* is gRPC"):
        client_for(
            "grpc://127.0.0.1:50051",
            meter,
            agent_id="a",
            options=cr.TransportOptions(credentials=cr.Credentials(password="x")),
        )
    with pytest.raises(ValueError, match="agent id 'a/b'"):
        client_for("mqtt://127.0.0.1", meter, agent_id="a/b")


# Round trips.


def test_register_round_trip(links: Links) -> None:
    server_meter, client_meter = ByteMeter(), ByteMeter()
    _, inbound = links.server(meter=server_meter)
    client = links.client(meter=client_meter)
    client.send(register())
    assert expect(client, "run_config").run_config.algorithm == "echo"
    peer, env = inbound.next()
    assert (peer, env.agent_id) == ("agent-a", "agent-a")
    assert server_meter.rows() == client_meter.rows()
    up = pb.Frame(envelope=register().envelope, message_id=1 << 48).ByteSize()  # a 7-byte id
    assert client_meter.total(direction="up") == mc.wire_bytes("pfl/run-1/from/agent-a/frames", up)


def test_10mb_tensor_is_chunked_and_bit_exact_both_ways(links: Links) -> None:
    server_meter, client_meter = ByteMeter(), ByteMeter()
    _, inbound = links.server(meter=server_meter)
    client = links.client(meter=client_meter)
    msg, weights = big_result()
    client.send(msg)
    assert decoded(inbound.next_message()).tobytes() == weights.tobytes()
    assert decoded(expect_message(client, "task")).tobytes() == weights.tobytes()
    frames = 1 + -(-weights.nbytes // CHUNK_BYTES)  # a head, then the blob in chunks
    for meter in (server_meter, client_meter):
        (row_up,) = [r for r in meter.rows() if r["direction"] == "up"]
        assert row_up["frames"] == frames
    assert server_meter.rows() == client_meter.rows()


def _settled(proxy: CountingProxy) -> SocketCounts:
    """The proxy's counts once nothing has crossed it for 0.2 s (keepalive is 60 s)."""
    last = proxy.counts()
    while True:
        time.sleep(0.2)
        now = proxy.counts()
        if now == last:
            return now
        last = now


def _crossed(proxy: CountingProxy, since: SocketCounts) -> int:
    now = proxy.counts()
    return now.up - since.up + now.down - since.down


def _assert_crossed(proxy: CountingProxy, since: SocketCounts, counted: int) -> None:
    wait_for(lambda: _crossed(proxy, since) >= counted, "the last PUBACK")
    _settled(proxy)
    assert _crossed(proxy, since) == counted


def test_byte_counts_equal_the_socket_bytes_on_both_links(
    links: Links, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pfl_edge.transport")
    target = ("127.0.0.1", links.broker.port)
    coord_proxy, agent_proxy = CountingProxy(target).start(), CountingProxy(target).start()
    links.closers[:0] = [coord_proxy.stop, agent_proxy.stop]
    server_meter, client_meter = ByteMeter(), ByteMeter()
    links.server(port=coord_proxy.port, meter=server_meter)
    client = links.client(port=agent_proxy.port, meter=client_meter)
    wait_for(lambda: "agent agent-a connected" in caplog.text, "the online status")
    before = {p: _settled(p) for p in (coord_proxy, agent_proxy)}
    client.send(big_result()[0])
    expect(client, "task")
    for proxy, meter in ((agent_proxy, client_meter), (coord_proxy, server_meter)):
        _assert_crossed(proxy, before[proxy], meter.total())
    assert server_meter.rows() == client_meter.rows()


def test_envelopes_reach_the_inbound_one_at_a_time_in_order(links: Links) -> None:
    """The coordinator resolves futures on its own thread, later; the next envelope of the
    agent waits for the previous one, and the replies keep the order."""
    order: list[int] = []
    busy = threading.Semaphore(1)
    overlaps: list[int] = []

    class LateInbound(RecordingInbound):
        def on_message(self, peer: str | None, msg: Message) -> Future[list[Message]]:
            seq = msg.envelope.seq
            if not busy.acquire(blocking=False):
                overlaps.append(seq)
            order.append(seq)
            fut: Future[list[Message]] = Future()

            def resolve() -> None:
                busy.release()
                fut.set_result([envelope(agent_id="agent-a", seq=seq, metrics=pb.Metrics())])

            threading.Timer(0.01, resolve).start()
            return fut

    links.server(LateInbound())
    client = links.client()
    for seq in range(1, 11):
        client.send(envelope(agent_id="agent-a", seq=seq, metrics=pb.Metrics()))
    replies = [expect(client, "metrics").seq for _ in range(10)]
    assert order == list(range(1, 11))
    assert replies == list(range(1, 11))
    assert overlaps == []


# Refusals: logged with the reason, sent to the agent, the server keeps serving.


def test_malformed_payload_refused_and_server_keeps_serving(
    links: Links, caplog: pytest.LogCaptureFixture
) -> None:
    _, inbound = links.server()
    client = links.client()
    client.send_raw(b"\xff\xfe this is not a frame")
    err = refusal(client)
    assert err.code == pb.ERROR_CODE_INVALID_ARGUMENT
    assert "malformed frame: 22 bytes that are not a pfl_edge.v1.Frame" in err.reason
    assert "refused message from agent agent-a: INVALID_ARGUMENT: malformed frame" in caplog.text
    # Until it registers again the agent's frames are dropped, as on a refused gRPC stream.
    client.send_raw(
        pb.Frame(envelope=pb.Envelope(agent_id="agent-a", metrics=pb.Metrics())).SerializeToString()
    )
    client.connect(WAIT_S)
    client.send(register())
    expect(client, "run_config")
    _, env = inbound.next()
    assert env.HasField("register")
    assert inbound.received.empty()


def test_oversized_declared_total_refused_before_allocation(
    links: Links, caplog: pytest.LogCaptureFixture
) -> None:
    _, inbound = links.server()
    client, other = links.client(), links.client("agent-b")
    head = pb.Head(
        transfer_id=7,
        envelope=big_result()[0].envelope,
        blob_bytes=[1 << 40],
        chunk_bytes=CHUNK_BYTES,
    )
    client.send_raw(pb.Frame(head=head).SerializeToString())
    err = refusal(client)
    assert err.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
    assert "declares 1099511627776 bytes, above this receiver's maximum" in err.reason
    assert "refused message from agent agent-a: RESOURCE_EXHAUSTED" in caplog.text
    other.send(register("agent-b"))
    expect(other, "run_config")
    assert inbound.next()[0] == "agent-b"


def test_impersonation_reaches_the_inbound_with_the_topic_agent(links: Links) -> None:
    _, inbound = links.server()
    client = links.client("agent-a")
    client.send(register("agent-a", as_="agent-b"))
    peer, env = inbound.next()
    assert (peer, env.agent_id) == ("agent-a", "agent-b")
    err = refusal(client)
    assert err.refused and err.code == pb.ERROR_CODE_PERMISSION_DENIED
    assert "agent 'agent-a' may not register as 'agent-b'" in err.reason


# Presence: last will, closing, lost links, broker restart.


def test_closing_is_reported_after_the_grace_unless_the_agent_returns(
    links: Links, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pfl_edge.transport")
    _, inbound = links.server(offline_grace_s=1.0)
    links.client().close()
    links.client()  # a new transport of the same agent, as the agent runtime reconnects
    wait_for(lambda: caplog.text.count("agent agent-a connected") == 2, "the second connect")
    links.client("agent-b").close()
    assert inbound.disconnects.get(timeout=WAIT_S) == ("agent-b", "the agent closed its transport")
    assert inbound.disconnects.empty()


def test_lost_link_delivers_what_was_queued_meanwhile(
    links: Links, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pfl_edge.transport")
    target = ("127.0.0.1", links.broker.port)
    proxy = CountingProxy(target).start()
    server, inbound = links.server(offline_grace_s=WAIT_S)
    client = links.client(port=proxy.port)
    client.send(register())
    expect(client, "run_config")
    inbound.next()
    proxy.stop()  # the agent's network goes away; the broker publishes its last will
    wait_for(
        lambda: "agent agent-a offline (connection to the broker lost (last will))" in caplog.text,
        "the last will",
    )
    msg, weights = big_result()
    client.send(msg)  # queued by paho
    assert server.send(
        "agent-a", envelope(agent_id="agent-a", round=4, task=pb.Task(action="while away"))
    )
    proxy = CountingProxy(target, port=proxy.port).start()
    links.closers.insert(0, proxy.stop)
    assert expect(client, "task").task.action == "while away"
    assert decoded(inbound.next_message()).tobytes() == weights.tobytes()
    assert expect(client, "task").task.action == "echo"
    wait_for(lambda: "agent agent-a reconnected" in caplog.text, "the reconnected status")
    assert inbound.disconnects.empty()


def test_last_will_reported_and_a_returning_agent_asked_to_register_again(links: Links) -> None:
    target = ("127.0.0.1", links.broker.port)
    proxy = CountingProxy(target).start()
    _, inbound = links.server(offline_grace_s=0.2)
    client = links.client(port=proxy.port)
    proxy.stop()
    agent, reason = inbound.disconnects.get(timeout=WAIT_S)
    assert (agent, reason) == ("agent-a", "connection to the broker lost (last will)")
    proxy = CountingProxy(target, port=proxy.port).start()
    links.closers.insert(0, proxy.stop)
    err = refusal(client)
    assert not err.refused
    assert (
        "reported disconnected (connection to the broker lost (last will)): register again"
        in err.reason
    )
    client.connect(WAIT_S)
    client.send(register())
    expect(client, "run_config")


def test_broker_restart_loses_nothing(links: Links, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pfl_edge.transport")
    server, inbound = links.server()
    client = links.client()
    client.send(register())
    expect(client, "run_config")
    inbound.next()
    links.broker.stop()
    client.send(envelope(agent_id="agent-a", round=1, metrics=pb.Metrics(values={"q": 1})))
    server.send("agent-a", envelope(agent_id="agent-a", round=2, task=pb.Task(action="q")))
    links.broker.start()
    assert expect(client, "task").task.action == "q"
    _, env = inbound.next()
    assert env.metrics.values["q"] == 1
    client.send(register())  # after the restart
    expect(client, "run_config")
    wait_for(lambda: "agent agent-a reconnected" in caplog.text, "the reconnected status")
    assert inbound.disconnects.empty()


def test_a_message_published_twice_reaches_the_coordinator_once(
    links: Links, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pfl_edge.framing")
    _, inbound = links.server()
    client = links.client()
    raw = next(Framer().frames(register()))
    client.send_raw(raw)
    client.send_raw(raw)  # as QoS 1 redelivers what a broker restart caught unacknowledged
    client.send(envelope(agent_id="agent-a", round=1, metrics=pb.Metrics(values={"q": 1})))
    assert inbound.next()[1].HasField("register")
    assert inbound.next()[1].metrics.values["q"] == 1
    expect(client, "run_config")
    assert "dropped a repeat of message" in caplog.text
    assert inbound.received.empty()


def test_a_message_redelivered_after_the_agent_reconnects_reaches_it_once(links: Links) -> None:
    """As after a broker restart: the agent got a task, reconnected, and the broker delivers
    the same frame again (QoS 1). A raw session stands in for the broker's redelivery."""
    client = links.client()
    coordinator = mc.Session(
        "127.0.0.1",
        links.broker.port,
        "pfl:run-1:raw",
        subscriptions=[],
        on_message=lambda _t, _p: None,
    )
    coordinator.open(WAIT_S, fresh=True)
    links.closers.append(coordinator.close)
    framer, inbox = Framer(), mc.Topics(RUN).inbox("agent-a")
    task = next(framer.frames(envelope(agent_id="agent-a", round=1, task=pb.Task(action="a"))))
    coordinator.publish(inbox, task)
    assert expect(client, "task").task.action == "a"
    client.connect(WAIT_S)  # resumes the session
    coordinator.publish(inbox, task)
    coordinator.publish(
        inbox, next(framer.frames(envelope(agent_id="agent-a", round=1, task=pb.Task(action="b"))))
    )
    assert expect(client, "task").task.action == "b"
    assert client.recv(0.2) is None


def test_a_starting_coordinator_makes_connected_agents_register_again(links: Links) -> None:
    early = links.client()
    early.send(register())  # no coordinator has subscribed yet: it reaches nobody
    first, _ = links.server()
    err = refusal(early)
    assert not err.refused
    assert err.reason == f"the coordinator of run {RUN} started: register again"
    late = links.client("agent-b")  # after the start: nothing to redo
    late.send(register("agent-b"))
    expect(late, "run_config")
    early.connect(WAIT_S)
    early.send(register())
    expect(early, "run_config")
    first.stop()
    links.server()  # a restarted coordinator
    assert not refusal(late).refused
    assert not refusal(early).refused


def test_recv_raises_when_the_broker_stays_away(links: Links) -> None:
    links.server()
    client = links.client(reconnect_deadline_s=0.3)
    links.broker.stop()
    err = refusal(client)
    assert not err.refused
    assert "not re-established within 0.3 s" in err.reason


# Connection failures.


def test_unreachable_broker() -> None:
    client = MqttClientTransport("127.0.0.1", free_port(), ByteMeter(), agent_id="a")
    start = time.monotonic()
    with pytest.raises(TransportClosed, match="not reachable") as info:
        client.connect(0.5)
    assert not info.value.refused
    assert time.monotonic() - start < 3


def test_chunks_above_the_broker_packet_limit_refused_at_connect(mosquitto: Broker) -> None:
    too_large = cr.TransportOptions(chunk_bytes=2 * CHUNK_BYTES)
    client = MqttClientTransport(
        "127.0.0.1", mosquitto.port, ByteMeter(), agent_id="a", options=too_large
    )
    with pytest.raises(TransportClosed, match="raise the broker's max_packet_size") as info:
        client.connect(WAIT_S)
    assert info.value.code == pb.ERROR_CODE_FAILED_PRECONDITION
    server = MqttServerTransport("127.0.0.1", mosquitto.port, ByteMeter(), options=too_large)
    with pytest.raises(RuntimeError, match="accepts packets of up to 1053696 bytes"):
        server.start(RecordingInbound())


def test_fresh_transport_does_not_get_its_predecessors_messages(links: Links) -> None:
    server, _ = links.server()
    links.client().close()
    server.send("agent-a", envelope(agent_id="agent-a", task=pb.Task(action="stale")))
    server.stop(grace_s=WAIT_S)  # the broker has queued it for the old session
    links.server()
    client = links.client()  # a new process: a fresh session
    client.send(register())
    expect(client, "run_config")


def test_deploy_config_packet_limit_matches_the_code(tmp_path: Path) -> None:
    conf = (Path(__file__).resolve().parents[1] / "deploy/mosquitto/mosquitto.conf").read_text()
    (line,) = [x for x in conf.splitlines() if x.startswith("max_packet_size ")]
    assert int(line.split()[1]) == mc.MAX_PACKET_BYTES


def test_packet_above_the_broker_limit_refused_before_queueing(mosquitto: Broker) -> None:
    """Sent anyway, it would make the broker drop the connection, and paho resend it after
    every reconnect."""
    session = mc.Session(
        "127.0.0.1",
        mosquitto.port,
        "pfl:run-1:oversize",
        subscriptions=[],
        on_message=lambda _t, _p: None,
    )
    session.open(WAIT_S, fresh=True)
    try:
        with pytest.raises(TransportClosed, match="exceeds the broker's limit of 1053696") as info:
            session.publish("pfl/run-1/x", b"small", b"x" * mc.MAX_PACKET_BYTES)
        assert info.value.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
        assert session.drain(0)  # the small one was not queued either
        assert session.connected
    finally:
        session.close()

"""The broker's security as deployed: deploy/mosquitto/mosquitto.conf (TLS, passwords) with
the deploy ACL file, against a real mosquitto. An agent can neither publish as another
agent nor read another agent's inbox; the transports work within the rules."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pfl_edge.accounting import ByteMeter
from pfl_edge.transport import mqtt_common as mc
from pfl_edge.transport.base import TransportClosed
from pfl_edge.transport.mqtt_client import MqttClientTransport
from pfl_edge.transport.mqtt_server import MqttServerTransport
from pfl_edge.v1 import messages_pb2 as pb
from tests.conftest import SecureBroker
from tests.test_mqtt_transport import RUN, WAIT_S, RecordingInbound, envelope, expect, register

pytestmark = pytest.mark.timeout(60)

NOT_AUTHORIZED = 0x87


class RawAgent:
    """A plain paho client logged in as an agent, to try what our transport never does."""

    def __init__(self, sb: SecureBroker, user: str) -> None:
        self.acks: dict[int, ReasonCode] = {}
        self.acked = threading.Condition()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        connected = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{user}", protocol=paho.MQTTv5)
        c.username_pw_set(user, sb.passwords[user])
        c.tls_set(ca_certs=str(sb.certs.ca))
        c.on_connect = lambda _c, _u, _f, _r, _p: connected.set()
        c.on_publish = self._on_publish
        c.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, bytes(msg.payload)))
        c.connect("127.0.0.1", sb.broker.port)
        c.loop_start()
        assert connected.wait(WAIT_S)
        self.client = c

    def _on_publish(
        self, _c: paho.Client, _u: object, mid: int, reason: ReasonCode, _p: Properties
    ) -> None:
        with self.acked:
            self.acks[mid] = reason
            self.acked.notify_all()

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason."""
        mid = self.client.publish(topic, payload, qos=1).mid
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.acks, WAIT_S)
            return self.acks[mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def coordinator(
    secure_mosquitto: SecureBroker,
) -> Iterator[tuple[MqttServerTransport, RecordingInbound]]:
    sb = secure_mosquitto
    server = MqttServerTransport(
        "127.0.0.1",
        sb.broker.port,
        ByteMeter(),
        run_id=RUN,
        password=sb.passwords["coordinator"],
        tls=sb.certs.client_tls(),
        offline_grace_s=0.2,
    )
    inbound = RecordingInbound()
    server.start(inbound)
    try:
        yield server, inbound
    finally:
        server.stop()


def agent(
    sb: SecureBroker,
    agent_id: str = "agent-a",
    user: str | None = None,
    password: str | None = None,
) -> MqttClientTransport:
    return MqttClientTransport(
        "127.0.0.1",
        sb.broker.port,
        ByteMeter(),
        agent_id=agent_id,
        run_id=RUN,
        username=user,
        password=password or sb.passwords[user or agent_id],
        tls=sb.certs.client_tls(),
    )


def frame(agent_id: str) -> bytes:
    return pb.Frame(envelope=register(agent_id).envelope).SerializeToString()


def test_agent_cannot_publish_into_another_agents_topics(
    secure_mosquitto: SecureBroker,
    coordinator: tuple[MqttServerTransport, RecordingInbound],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, inbound = coordinator
    rogue = RawAgent(secure_mosquitto, "agent-a")
    try:
        topics = mc.Topics(RUN)
        for topic, payload in (
            (topics.frames_from("agent-b"), frame("agent-b")),
            (topics.status_of("agent-b"), mc.status(RUN, "agent-b", mc.OFFLINE, "forged")),
            (topics.peers("agent-b", "soft"), b"forged"),
            (topics.inbox("agent-b"), frame("agent-b")),
        ):
            assert rogue.publish(topic, payload).value == NOT_AUTHORIZED, topic
        assert not rogue.publish(topics.frames_from("agent-a"), frame("agent-a")).is_failure
        # The broker keeps one publisher's order: the forged messages would have come first.
        peer, env = inbound.next()
        assert (peer, env.agent_id) == ("agent-a", "agent-a")
        assert inbound.received.empty()
        assert "agent-b" not in caplog.text
    finally:
        rogue.close()


def test_agent_cannot_read_another_agents_inbox_or_uploads(
    secure_mosquitto: SecureBroker, coordinator: tuple[MqttServerTransport, RecordingInbound]
) -> None:
    server, inbound = coordinator
    rogue = RawAgent(secure_mosquitto, "agent-a")
    b = agent(secure_mosquitto, "agent-b")
    try:
        subscribed = threading.Event()
        rogue.client.on_subscribe = lambda *_: subscribed.set()
        rogue.client.subscribe([(f"pfl/{RUN}/to/#", 1), (f"pfl/{RUN}/from/#", 1)])
        assert subscribed.wait(WAIT_S)
        b.connect(WAIT_S)
        b.send(register("agent-b"))
        expect(b, "run_config")
        inbound.next()
        server.send("agent-b", envelope(agent_id="agent-b", task=pb.Task(action="secret")))
        assert b.recv(WAIT_S) is not None
        server.send("agent-a", envelope(agent_id="agent-a", task=pb.Task(action="mine")))
        topic, _ = rogue.messages.get(timeout=WAIT_S)
        # Everything for or from agent-b was published before this, so it would be here.
        assert topic == f"pfl/{RUN}/to/agent-a/frames"
        assert rogue.messages.empty()
    finally:
        b.close()
        rogue.close()


def test_transports_work_within_the_rules(
    secure_mosquitto: SecureBroker, coordinator: tuple[MqttServerTransport, RecordingInbound]
) -> None:
    _, inbound = coordinator
    a = agent(secure_mosquitto)
    a.connect(WAIT_S)
    a.send(register())
    expect(a, "run_config")
    assert inbound.next()[0] == "agent-a"
    a.close()  # its offline status is allowed too, so the coordinator learns of it
    assert inbound.disconnects.get(timeout=WAIT_S) == ("agent-a", "the agent closed its transport")


def test_wrong_password_refused(secure_mosquitto: SecureBroker) -> None:
    with pytest.raises(TransportClosed, match="refused pfl:run-1:agent:agent-a") as info:
        agent(secure_mosquitto, password="wrong").connect(WAIT_S)
    assert info.value.code == pb.ERROR_CODE_UNAUTHENTICATED


def test_anonymous_refused(secure_mosquitto: SecureBroker) -> None:
    client = MqttClientTransport(
        "127.0.0.1",
        secure_mosquitto.broker.port,
        ByteMeter(),
        agent_id="agent-a",
        tls=secure_mosquitto.certs.client_tls(),
    )
    with pytest.raises(TransportClosed) as info:
        client.connect(WAIT_S)
    assert info.value.refused


def test_agent_id_other_than_the_username_refused(secure_mosquitto: SecureBroker) -> None:
    client = agent(secure_mosquitto, "agent-b", user="agent-a")
    with pytest.raises(TransportClosed, match="Not authorized") as info:
        client.connect(WAIT_S)
    assert info.value.code == pb.ERROR_CODE_PERMISSION_DENIED


def test_mutual_tls(mutual_tls_mosquitto: SecureBroker) -> None:
    sb = mutual_tls_mosquitto
    with_cert = MqttClientTransport(
        "127.0.0.1",
        sb.broker.port,
        ByteMeter(),
        agent_id="agent-a",
        run_id=RUN,
        password=sb.passwords["agent-a"],
        tls=sb.certs.client_tls(mutual=True),
    )
    with_cert.connect(WAIT_S)
    with_cert.close()
    without = agent(sb)
    with pytest.raises(TransportClosed):
        without.connect(1.0)

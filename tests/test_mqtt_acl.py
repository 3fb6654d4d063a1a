"""The broker's security as deployed: deploy/mosquitto/mosquitto.conf (TLS, passwords) with
the deploy ACL file, against a real mosquitto. An agent can neither publish as another
agent (uploads, status, peer messages) nor read another agent's inbox; the transports,
peer exchange included, work within the rules."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from coordinator.config import ConfigError, RunConfig, ServerSection
from coordinator.service import broker_login
from pfl_edge.accounting import ByteMeter
from pfl_edge.framing import Message
from pfl_edge.transport import credentials as cr
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
        options=cr.TransportOptions(
            credentials=cr.Credentials(
                password=sb.passwords["coordinator"], tls=sb.certs.client_tls()
            )
        ),
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
        options=cr.TransportOptions(
            credentials=cr.Credentials(
                user, password or sb.passwords[user or agent_id], sb.certs.client_tls()
            )
        ),
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
            (topics.peer_frames("agent-b"), frame("agent-b")),
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


def test_agents_exchange_peer_messages_within_the_rules(secure_mosquitto: SecureBroker) -> None:
    a, b = agent(secure_mosquitto, "agent-a"), agent(secure_mosquitto, "agent-b")
    try:
        a.connect(WAIT_S)
        b.connect(WAIT_S)
        result = pb.Result(phase=0, action="predict")
        a.send_to_peers(
            Message(pb.Envelope(agent_id="agent-a", run_id=RUN, round=1, result=result))
        )
        got = b.recv_peer(WAIT_S)
        assert got is not None and got.envelope.agent_id == "agent-a"
        assert a.recv_peer(0.2) is None  # its own message does not come back
    finally:
        a.close()
        b.close()


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
        options=cr.TransportOptions(
            credentials=cr.Credentials(tls=secure_mosquitto.certs.client_tls())
        ),
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
        options=cr.TransportOptions(
            credentials=cr.Credentials(
                password=sb.passwords["agent-a"], tls=sb.certs.client_tls(mutual=True)
            )
        ),
    )
    with_cert.connect(WAIT_S)
    with_cert.close()
    without = agent(sb)
    with pytest.raises(TransportClosed):
        without.connect(1.0)


# Login settings as users give them (pfl-agent run options, [server] keys).


def test_login_reads_the_first_line_of_the_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret \nignored\n")
    (tmp_path / "ca.crt").write_text("")
    auth = cr.load_credentials("agent-a", str(tmp_path / "pw"), str(tmp_path / "ca.crt"))
    assert auth == cr.Credentials("agent-a", "s3cret ", cr.TlsFiles(str(tmp_path / "ca.crt")))
    assert cr.load_credentials() == cr.Credentials()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"password_file": "missing"}, "cannot read the MQTT password file"),
        ({"password_file": "empty"}, "is empty"),
        ({"tls_ca": "missing"}, "TLS CA file"),
        ({"tls_ca": "ca", "tls_cert": "ca"}, "certificate and its key go together"),
        ({"tls_cert": "ca", "tls_key": "ca"}, "needs the CA file"),
    ],
)
def test_login_says_what_is_wrong(tmp_path: Path, files: dict[str, str], message: str) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "ca").write_text("")
    with pytest.raises(ValueError, match=message):
        cr.load_credentials(**{k: str(tmp_path / v) for k, v in files.items()})


def test_coordinator_login_keys_need_a_broker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.mqtt_tls_ca = .* used with server\.mqtt"):
        RunConfig(server=ServerSection(mqtt_tls_ca="ca.crt"))
    with pytest.raises(ConfigError, match=r"server\.mqtt = 'grpc://h:1' is invalid"):
        RunConfig(server=ServerSection(mqtt="grpc://h:1"))
    cfg = RunConfig(server=ServerSection(mqtt="mqtt://h:1", mqtt_password_file=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"\[server\] cannot read the MQTT password file"):
        broker_login(cfg.server)


def test_agent_refuses_broker_options_for_grpc(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "edge_agent.cli", "run", "--coordinator", "grpc://h:1"]
    cmd += ["--model", "lenet5", "--data", "x.npz", "--mqtt-password-file", "pw"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "pfl-agent: --mqtt-password-file: only for an mqtt:// --coordinator" in proc.stderr

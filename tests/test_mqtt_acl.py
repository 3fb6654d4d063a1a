"""The broker's security as deployed: deploy/mosquitto/mosquitto.conf (mutual TLS, or
passwords over TLS) with the accounts and ACL of a fleet made by pfl_edge.certs, against a
real mosquitto. An agent can neither publish as another agent (uploads, status, peer
messages) nor read another agent's inbox, nor take over another client's id (the
coordinator's included); the transports, peer exchange and persistent sessions included,
work within the rules, and an agent removed from the fleet is locked out at the reload."""

from __future__ import annotations

import logging
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from coordinator.config import ConfigError, RunConfig, ServerSection
from coordinator.service import broker_login
from pfl_edge import certs
from pfl_edge.accounting import ByteMeter
from pfl_edge.broker import DEPLOY_CONFIG
from pfl_edge.framing import Message
from pfl_edge.transport import credentials as cr
from pfl_edge.transport import mqtt_common as mc
from pfl_edge.transport.base import TransportClosed
from pfl_edge.transport.mqtt_client import MqttClientTransport
from pfl_edge.transport.mqtt_server import MqttServerTransport
from pfl_edge.v1 import messages_pb2 as pb
from tests.conftest import SecureBroker, secure_broker
from tests.mosquitto import Certs, make_fleet
from tests.test_mqtt_transport import (
    RUN,
    WAIT_S,
    RecordingInbound,
    envelope,
    expect,
    register,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

NOT_AUTHORIZED = 0x87


class RawAgent:
    """A plain paho client logged in as an agent, to try what our transport never does."""

    def __init__(
        self, sb: SecureBroker, user: str, client_id: str = "", mutual: bool = False
    ) -> None:
        """Logged in as `user` with its password, or with `mutual` its certificate; asks
        for `client_id` (default raw-<user>)."""
        self.acks: dict[int, ReasonCode] = {}
        self.acked = threading.Condition()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.disconnected = threading.Event()
        connected = threading.Event()
        c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"raw-{user}", protocol=paho.MQTTv5
        )
        tls = sb.certs.client_tls(mutual, user)
        if not mutual:
            c.username_pw_set(user, sb.passwords[user])
        c.tls_set(ca_certs=tls.ca_certs, certfile=tls.certfile, keyfile=tls.keyfile)
        c.on_connect = lambda _c, _u, _f, _r, _p: connected.set()
        c.on_disconnect = lambda *_: self.disconnected.set()
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


def start_coordinator(
    sb: SecureBroker, mutual: bool = False, offline_grace_s: float = 0.2
) -> tuple[MqttServerTransport, RecordingInbound]:
    """The coordinator's transport, logged in with its password or (`mutual`) certificate."""
    if mutual:
        login = cr.Credentials(tls=sb.certs.client_tls(True, mc.COORDINATOR_USERNAME))
    else:
        login = cr.Credentials(password=sb.passwords["coordinator"], tls=sb.certs.client_tls())
    server = MqttServerTransport(
        "127.0.0.1",
        sb.broker.port,
        ByteMeter(),
        run_id=RUN,
        options=cr.TransportOptions(credentials=login),
        offline_grace_s=offline_grace_s,
    )
    inbound = RecordingInbound()
    server.start(inbound)
    return server, inbound


@pytest.fixture
def coordinator(
    secure_mosquitto: SecureBroker,
) -> Iterator[tuple[MqttServerTransport, RecordingInbound]]:
    server, inbound = start_coordinator(secure_mosquitto)
    try:
        yield server, inbound
    finally:
        server.stop()


def agent(
    sb: SecureBroker,
    agent_id: str = "agent-a",
    user: str | None = None,
    password: str | None = None,
    mutual: bool = False,
) -> MqttClientTransport:
    """An agent's transport: password login as `user` (default: the agent id) or, with
    `mutual`, the certificate of `user`."""
    if mutual:
        login = cr.Credentials(tls=sb.certs.client_tls(True, user or agent_id))
    else:
        login = cr.Credentials(
            user, password or sb.passwords[user or agent_id], sb.certs.client_tls()
        )
    return MqttClientTransport(
        "127.0.0.1",
        sb.broker.port,
        ByteMeter(),
        agent_id=agent_id,
        run_id=RUN,
        options=cr.TransportOptions(credentials=login),
    )


@dataclass(frozen=True)
class Deployed:
    """A broker in one of the deployed modes: passwords over TLS, or mutual TLS."""

    sb: SecureBroker
    mutual: bool


@pytest.fixture(params=[False, True], ids=["passwords", "mutual-tls"])
def deployed(request: pytest.FixtureRequest) -> Deployed:
    mutual = bool(request.param)
    sb = request.getfixturevalue("mutual_tls_mosquitto" if mutual else "secure_mosquitto")
    return Deployed(sb, mutual)


@pytest.fixture
def deployed_coordinator(
    deployed: Deployed,
) -> Iterator[tuple[MqttServerTransport, RecordingInbound]]:
    server, inbound = start_coordinator(deployed.sb, deployed.mutual)
    try:
        yield server, inbound
    finally:
        server.stop()


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
    deployed: Deployed, deployed_coordinator: tuple[MqttServerTransport, RecordingInbound]
) -> None:
    _, inbound = deployed_coordinator
    a = agent(deployed.sb, mutual=deployed.mutual)
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


def test_agent_id_other_than_the_username_refused(deployed: Deployed) -> None:
    client = agent(deployed.sb, "agent-b", user="agent-a", mutual=deployed.mutual)
    with pytest.raises(TransportClosed, match="Not authorized") as info:
        client.connect(WAIT_S)
    assert info.value.code == pb.ERROR_CODE_PERMISSION_DENIED


def test_mutual_tls_the_certificate_is_the_login(mutual_tls_mosquitto: SecureBroker) -> None:
    sb = mutual_tls_mosquitto
    with_cert = agent(sb, mutual=True)  # no username, no password
    with_cert.connect(WAIT_S)
    with_cert.close()
    assert "as agent-a (" in sb.broker.log_text()  # client id: the certificate's name
    without = agent(sb)  # the right password, no certificate: the handshake fails
    with pytest.raises(TransportClosed):
        without.connect(1.0)


# Client ids are the usernames (use_username_as_clientid): no account takes over another's.


def test_an_agent_cannot_take_over_the_coordinators_client_id(
    deployed: Deployed,
    deployed_coordinator: tuple[MqttServerTransport, RecordingInbound],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pfl_edge.transport")
    _, inbound = deployed_coordinator
    sb = deployed.sb
    rogue = RawAgent(sb, "agent-a", mc.coordinator_client_id(RUN), deployed.mutual)
    b = agent(sb, "agent-b", mutual=deployed.mutual)
    try:
        # The broker would have closed the coordinator's connection before it answered
        # the rogue's CONNECT; the coordinator would have seen that before it answers b
        # (paho reconnects a second later at the earliest).
        b.connect(WAIT_S)
        b.send(register("agent-b"))
        expect(b, "run_config")
        assert inbound.next()[0] == "agent-b"
        assert "lost its connection" not in caplog.text
        log = sb.broker.log_text()
        assert "already connected" not in log
        assert "as agent-a (" in log
        # The rogue got a session of its own, not the coordinator's: no upload reaches it.
        assert rogue.messages.empty()
    finally:
        b.close()
        rogue.close()


def test_an_agent_cannot_take_over_another_agents_client_id(
    deployed: Deployed,
    deployed_coordinator: tuple[MqttServerTransport, RecordingInbound],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pfl_edge.transport")
    server, inbound = deployed_coordinator
    sb = deployed.sb
    b = agent(sb, "agent-b", mutual=deployed.mutual)
    b.connect(WAIT_S)
    rogue = RawAgent(sb, "agent-a", mc.agent_client_id(RUN, "agent-b"), deployed.mutual)
    try:
        b.send(register("agent-b"))
        expect(b, "run_config")
        inbound.next()
        server.send("agent-b", envelope(agent_id="agent-b", task=pb.Task(action="for b")))
        assert expect(b, "task").task.action == "for b"
        assert "lost its connection" not in caplog.text
        assert "already connected" not in sb.broker.log_text()
        assert rogue.messages.empty()
    finally:
        b.close()
        rogue.close()


def test_sessions_survive_a_broker_restart_under_username_client_ids(
    deployed: Deployed, caplog: pytest.LogCaptureFixture
) -> None:
    """As tests/test_mqtt_transport.py's restart test, with the broker choosing the ids."""
    caplog.set_level(logging.INFO, logger="pfl_edge.transport")
    sb = deployed.sb
    # The default grace: the agent's last will, which the stopping broker publishes, does
    # not count while the agent is back within it.
    server, inbound = start_coordinator(sb, deployed.mutual, mc.OFFLINE_GRACE_SECONDS)
    client = agent(sb, mutual=deployed.mutual)
    client.connect(WAIT_S)
    try:
        client.send(register())
        expect(client, "run_config")
        inbound.next()
        sb.broker.stop()
        client.send(envelope(agent_id="agent-a", round=1, metrics=pb.Metrics(values={"q": 1})))
        server.send("agent-a", envelope(agent_id="agent-a", round=2, task=pb.Task(action="q")))
        sb.broker.start()
        assert expect(client, "task").task.action == "q"
        assert inbound.next()[1].metrics.values["q"] == 1
        wait_for(lambda: "agent agent-a reconnected" in caplog.text, "the reconnected status")
        # Both came back to the sessions the broker saved under their usernames.
        assert caplog.text.count("(session present: True)") == 2
        assert inbound.disconnects.empty()
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("mutual", [False, True], ids=["passwords", "mutual-tls"])
def test_an_agent_removed_from_the_fleet_is_locked_out_at_the_reload(
    tmp_path: Path, mutual: bool
) -> None:
    fleet = make_fleet(tmp_path / "fleet")  # changed below: not the session's fleet
    sb = secure_broker(tmp_path, fleet, require_certificate=mutual)
    # What the device keeps: remove_agent deletes the fleet's copy.
    device = shutil.copytree(fleet.folder / "agents" / "agent-b", tmp_path / "device-b")
    live = RawAgent(sb, "agent-b", mutual=mutual)
    try:
        topic = mc.Topics(RUN).frames_from("agent-b")
        assert not live.publish(topic, frame("agent-b")).is_failure
        certs.remove_agent(fleet.folder, "agent-b")
        sb.broker.reload()
        if mutual:
            # The certificate still passes the handshake; the ACL no longer names it.
            assert live.publish(topic, frame("agent-b")).value == NOT_AUTHORIZED
            tls = cr.TlsFiles(*(str(device / f) for f in ("ca.crt", "agent.crt", "agent.key")))
            login = cr.Credentials(tls=tls)
        else:
            assert live.disconnected.wait(WAIT_S)  # mosquitto drops a login it no longer has
            password = (device / "mqtt-password").read_text().splitlines()[0]
            login = cr.Credentials("agent-b", password, sb.certs.client_tls())
        again = MqttClientTransport(
            "127.0.0.1",
            sb.broker.port,
            ByteMeter(),
            agent_id="agent-b",
            run_id=RUN,
            options=cr.TransportOptions(credentials=login),
        )
        if mutual:  # its certificate is on the fleet's CRL now: the handshake fails
            with pytest.raises(TransportClosed, match="refuses this client's certificate"):
                again.connect(5.0)
        else:
            with pytest.raises(TransportClosed, match="Not authorized") as info:
                again.connect(WAIT_S)
            assert info.value.code == pb.ERROR_CODE_UNAUTHENTICATED
        kept = agent(sb, "agent-a", mutual=mutual)  # the others are unaffected
        kept.connect(WAIT_S)
        kept.close()
    finally:
        live.close()
        sb.broker.stop()


def acl_rules(text: str) -> dict[str | None, set[str]]:
    """An ACL file's topic rules by `user`, and under None its pattern rules (mosquitto
    applies those to every user, wherever they stand)."""
    rules: dict[str | None, set[str]] = {None: set()}
    user = None
    for line in text.splitlines():
        if line.startswith("user "):
            user = line.split(" ", 1)[1]
            rules[user] = set()
        elif line.startswith("pattern "):
            rules[None].add(line.replace("pattern ", "topic ", 1))
        elif line.startswith("topic "):
            rules[user].add(line)
    return rules


def test_the_fleets_acl_spells_out_the_deploy_acls_patterns(certs: Certs) -> None:
    """deploy/mosquitto/acl states for every account what `pfl-edge certs` writes for
    each registered agent."""
    deploy = acl_rules((DEPLOY_CONFIG.parent / "acl").read_text())
    fleet = acl_rules((certs.folder / "mosquitto" / "acl").read_text())
    assert fleet.keys() == {None, "coordinator", "agent-a", "agent-b"}
    assert fleet[None] == set()  # no pattern: a removed agent is left with nothing
    assert fleet["coordinator"] == deploy["coordinator"]
    for agent_id in ("agent-a", "agent-b"):
        assert fleet[agent_id] == {r.replace("%u", agent_id) for r in deploy[None]}


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


def test_a_reissued_certificate_replaces_the_old_one_at_the_broker(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "fleet")  # changed below: not the session's fleet
    sb = secure_broker(tmp_path, fleet, require_certificate=True)
    old = shutil.copytree(fleet.folder / "agents" / "agent-a", tmp_path / "old-a")
    try:
        certs.add_agent(fleet.folder, "agent-a")  # re-issued: the old one goes on ca.crl
        sb.broker.reload()
        tls = cr.TlsFiles(*(str(old / f) for f in ("ca.crt", "agent.crt", "agent.key")))
        stale = MqttClientTransport(
            "127.0.0.1",
            sb.broker.port,
            ByteMeter(),
            agent_id="agent-a",
            run_id=RUN,
            options=cr.TransportOptions(credentials=cr.Credentials(tls=tls)),
        )
        with pytest.raises(TransportClosed):
            stale.connect(5.0)
        fresh = agent(sb, "agent-a", mutual=True)  # the new certificate logs in
        fresh.connect(WAIT_S)
        fresh.close()
    finally:
        sb.broker.stop()

"""Direct agent-to-agent exchange (pfl_edge.peer_exchange) against a real mosquitto and a
real coordinator, with agents scripted by hand: over MQTT a strategy's shared tensor goes
agent to agent and the coordinator only keeps the round clock; with any gRPC agent in
the round the coordinator relays it as a mailbox. The MQTT client transport drops peer
messages that are forged, malformed or oversized."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from coordinator.config import RunConfig, ServerSection
from coordinator.service import RunningCoordinator, start
from pfl_edge import codec
from pfl_edge import peer_exchange as px
from pfl_edge.accounting import ByteMeter
from pfl_edge.broker import Broker
from pfl_edge.framing import Message
from pfl_edge.transport import credentials as cr
from pfl_edge.transport import mqtt_common as mc
from pfl_edge.transport.base import ClientTransport
from pfl_edge.transport.grpc_client import GrpcClientTransport
from pfl_edge.transport.grpc_server import GrpcServerTransport
from pfl_edge.transport.mqtt_client import MqttClientTransport
from pfl_edge.v1 import messages_pb2 as pb
from pfl_edge.values import from_values, to_values
from tests.harness import SAMPLE_SHAPE, make_config, soft_predictions

pytestmark = pytest.mark.timeout(60)

RUN = "t"  # harness.make_config's run id
WAIT_S = 15.0
PER_ROUND = 50  # harness.make_config's public samples per round


class Peer:
    """An agent speaking the protocol by hand over any client transport."""

    def __init__(self, t: ClientTransport, agent_id: str, meter: ByteMeter) -> None:
        self.t, self.agent_id, self.meter = t, agent_id, meter
        self.seq = 0
        t.connect(WAIT_S)

    def send(self, rnd: int = 0, blobs: codec.Blobs | None = None, **body: Any) -> None:
        self.seq += 1
        env = pb.Envelope(agent_id=self.agent_id, run_id=RUN, round=rnd, seq=self.seq, **body)
        self.t.send(Message(env, blobs or []))

    def expect(self, kind: str) -> Message:
        msg = self.t.recv(WAIT_S)
        assert msg is not None, f"{self.agent_id}: no {kind} within {WAIT_S} s"
        got = msg.envelope.WhichOneof("body")
        assert got == kind, f"{self.agent_id}: expected {kind}, got {msg.envelope}"
        return msg

    def register(self) -> None:
        model = pb.ModelInfo(
            architecture="scripted",
            parameter_count=1000,
            input_shape=list(SAMPLE_SHAPE),
            num_classes=10,
        )
        self.send(register=pb.Register(model=model, num_train_samples=100, num_test_samples=20))
        self.expect("run_config")

    def answer(
        self,
        task: pb.Envelope,
        tensors: dict[str, np.ndarray] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        blobs: codec.Blobs = []
        result = pb.Result(
            phase=task.task.phase,
            action=task.task.action,
            tensors=codec.encode_many(tensors or {}, None, blobs),
            metrics=metrics or {"test_acc": 0.5},
        )
        self.send(task.round, blobs, result=result)


def mqtt_peer(broker: Broker, agent_id: str) -> Peer:
    meter = ByteMeter()
    t = MqttClientTransport("127.0.0.1", broker.port, meter, agent_id=agent_id, run_id=RUN)
    return Peer(t, agent_id, meter)


def grpc_peer(running: RunningCoordinator, agent_id: str) -> Peer:
    server = running.transport("grpc")
    assert isinstance(server, GrpcServerTransport)
    meter = ByteMeter()
    return Peer(GrpcClientTransport(f"127.0.0.1:{server.port}", meter), agent_id, meter)


@contextmanager
def coordinator(
    tmp: Path, broker: Broker, agents: int, *, grpc: bool
) -> Iterator[RunningCoordinator]:
    cfg: RunConfig = make_config(tmp, algorithm="fedh2l", rounds=1, min_agents=agents)
    server = ServerSection(grpc="127.0.0.1:0" if grpc else "", mqtt=broker.url, http="")
    running = start(replace(cfg, server=server))
    try:
        yield running
    finally:
        running.stop()


def finish(peers: list[Peer]) -> None:
    for p in peers:
        p.answer(p.expect("task").envelope, metrics={"final_test_acc": 0.5})
    for p in peers:
        p.expect("shutdown")
        p.t.close()


def test_over_mqtt_the_posteriors_go_agent_to_agent(tmp_path: Path, mosquitto: Broker) -> None:
    ids = ["a0", "a1", "a2"]
    soft = {a: soft_predictions(PER_ROUND, seed=i) for i, a in enumerate(ids)}
    with coordinator(tmp_path, mosquitto, len(ids), grpc=False) as running:
        peers = [mqtt_peer(mosquitto, a) for a in ids]
        for p in peers:
            p.register()
        reported: dict[str, dict[str, float]] = {}
        for p in peers:
            task = p.expect("task").envelope
            params = from_values(task.task.params)
            assert task.task.action == "predict" and params[px.SHARE] == "soft"
            result = pb.Result(
                phase=0,
                action="predict",
                tensors=codec.encode_many({"soft": soft[p.agent_id]}, "float32"),
                metrics={px.EXCHANGE: float(params[px.EXCHANGE])},
            )
            p.t.send_to_peers(
                Message(pb.Envelope(agent_id=p.agent_id, run_id=RUN, round=1, result=result))
            )
            up = p.meter.total(direction="up", kinds=[px.PEER_KIND])
            reported[p.agent_id] = {px.BYTES_UP: float(up)}
            p.answer(task, metrics=reported[p.agent_id])  # no "soft" for the coordinator
        for p in peers:
            task = p.expect("task").envelope
            assert task.task.action == "learn" and not task.task.tensors
            spec = px.GatherSpec.from_params(from_values(task.task.params))
            others = tuple(a for a in ids if a != p.agent_id)
            assert spec is not None and (spec.name, spec.source) == ("peers", "soft")
            assert spec.agents == others and 0 < spec.wait_s < 30
            got = {}
            while len(got) < len(others):
                msg = p.t.recv_peer(WAIT_S)
                assert msg is not None, f"{p.agent_id} got only {sorted(got)} from its peers"
                got[msg.envelope.agent_id] = codec.decode_many(msg.envelope.result.tensors)
            assert p.t.recv_peer(0.2) is None  # not its own (No Local)
            for a in others:
                np.testing.assert_array_equal(got[a]["soft"], soft[a])
            down = p.meter.total(direction="down", kinds=[px.PEER_KIND])
            reported[p.agent_id][px.BYTES_DOWN] = float(down)
            mask = np.ones(len(others), np.uint8)
            p.answer(
                task,
                {px.GATHERED: mask},
                {"test_acc": 0.5, **reported[p.agent_id]},
            )
        finish(peers)
        (rnd,) = running.store.rounds()
        tensor_up, tensor_down = running.engine.tensor_bytes[1]
        coordinator_up = running.meter.total(round_=1, direction="up")
        coordinator_down = running.meter.total(round_=1, direction="down")
    m = rnd.metrics
    assert m["mean_test_acc"] == 0.5 and m["participants"] == 3
    # Only the used-peer flags reached the coordinator, not one posterior.
    assert (tensor_up, tensor_down) == (3 * 2, 0)
    soft_bytes = soft["a0"].nbytes
    assert coordinator_up < 3 * soft_bytes / 4 and coordinator_down < 3 * soft_bytes / 4
    assert m["peer_bytes_up"] == sum(r[px.BYTES_UP] for r in reported.values())
    assert m["peer_bytes_down"] == sum(r[px.BYTES_DOWN] for r in reported.values())
    assert m["peer_bytes_down"] == 2 * m["peer_bytes_up"] > 3 * soft_bytes
    assert m["bytes_up"] == coordinator_up + m["peer_bytes_up"]
    assert m["bytes_down"] == coordinator_down + m["peer_bytes_down"]


def test_with_a_grpc_agent_the_coordinator_is_the_mailbox(
    tmp_path: Path, mosquitto: Broker
) -> None:
    ids = ["a0", "a1", "a2"]
    soft = {a: soft_predictions(PER_ROUND, seed=i) for i, a in enumerate(ids)}
    with coordinator(tmp_path, mosquitto, len(ids), grpc=True) as running:
        peers = [mqtt_peer(mosquitto, "a0"), grpc_peer(running, "a1"), mqtt_peer(mosquitto, "a2")]
        for p in peers:
            p.register()
        for p in peers:
            task = p.expect("task").envelope
            assert task.task.action == "predict"
            assert not [k for k in task.task.params if k.startswith(px.PREFIX)]
            p.answer(task, {"soft": soft[p.agent_id]})
        for p in peers:
            msg = p.expect("task")
            task = msg.envelope.task
            assert task.action == "learn"
            assert not [k for k in task.params if k.startswith(px.PREFIX)]
            peers_soft = codec.decode_many(task.tensors, msg.blobs)["peers"]
            others = [soft[a] for a in ids if a != p.agent_id]
            np.testing.assert_allclose(peers_soft, np.concatenate(others), atol=1e-2)  # int8
            p.answer(msg.envelope)
        finish(peers)
        (rnd,) = running.store.rounds()
    assert rnd.metrics["peer_bytes_up"] == rnd.metrics["peer_bytes_down"] == 0
    assert rnd.metrics["tensor_bytes_down"] > 2 * rnd.metrics["tensor_bytes_up"] * 0.9


class RawClient:
    """A plain paho client, to publish what our transport never would."""

    def __init__(self, broker: Broker) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_forged_malformed_and_oversized_peer_messages_are_dropped(
    mosquitto: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    topics = mc.Topics(RUN)
    b_meter = ByteMeter()
    b = MqttClientTransport(
        "127.0.0.1",
        mosquitto.port,
        b_meter,
        agent_id="b",
        run_id=RUN,
        options=cr.TransportOptions(max_message_bytes=1 << 20),
    )
    a = MqttClientTransport("127.0.0.1", mosquitto.port, ByteMeter(), agent_id="a", run_id=RUN)
    raw = RawClient(mosquitto)
    try:
        b.connect(WAIT_S)
        a.connect(WAIT_S)

        def frame(**env: Any) -> bytes:
            return pb.Frame(envelope=pb.Envelope(**env)).SerializeToString()

        result = pb.Result(phase=0, action="predict")
        huge = pb.Head(transfer_id=1, envelope=pb.Envelope(agent_id="a"), blob_bytes=[2 << 20])
        for topic, payload in (
            (topics.peer_frames("a"), frame(agent_id="c", run_id=RUN, round=1, result=result)),
            (topics.peer_frames("a"), frame(agent_id="a", run_id="other", round=1, result=result)),
            (topics.peer_frames("a"), frame(agent_id="a", run_id=RUN, round=1, task=pb.Task())),
            (topics.peer_frames("a"), b"\xff not a frame"),
            (topics.peer_frames("a"), pb.Frame(head=huge).SerializeToString()),
            (topics.peer_frames("b"), frame(agent_id="b", run_id=RUN, round=1, result=result)),
        ):
            raw.publish(topic, payload)
        sent = Message(
            pb.Envelope(
                agent_id="a",
                run_id=RUN,
                round=1,
                result=pb.Result(
                    phase=0,
                    action="predict",
                    tensors=codec.encode_many({"soft": np.ones((300, 100), np.float32)}),
                ),
            )
        )
        a.send_to_peers(sent)
        # The broker keeps one publisher's order, and the raw client published first; the
        # real one's message (chunked: 120 kB) is the only one delivered.
        got = b.recv_peer(WAIT_S)
        assert got is not None and got.envelope.agent_id == "a"
        assert codec.decode_many(got.envelope.result.tensors, got.blobs)["soft"].shape == (300, 100)
        assert b.recv_peer(0.5) is None
        # `a` took the raw client's message on b's topic for b's (it is b's topic) and
        # dropped those on its own topic; its own real message did not come back.
        echo = a.recv_peer(WAIT_S)
        assert echo is not None and echo.envelope.agent_id == "b"
        assert a.recv_peer(0.5) is None
        with pytest.raises(ValueError, match="cannot send for"):
            a.send_to_peers(Message(pb.Envelope(agent_id="b", run_id=RUN)))
    finally:
        raw.close()
        a.close()
        b.close()
    text = caplog.text
    assert "a result of agent 'c' in run 't'" in text
    assert "in run 'other'" in text
    assert "a task of agent 'a'" in text
    assert "not a pfl_edge.v1.Frame" in text
    assert "above this receiver's maximum" in text
    assert "not another agent's peer topic" in text
    # Every delivered message, dropped or not, is counted as peer traffic of its round.
    assert b_meter.total(direction="down", kinds=[px.PEER_KIND], round_=1) > 120_000


def test_gather_spec_round_trips_through_task_params() -> None:
    spec = px.GatherSpec("peers", "soft", ("a0", "a2"), exchange=2**47 + 3, wait_s=7.5)
    params = from_values(to_values(spec.params()))
    own, framework = px.split_params({**params, "lr": 0.1})
    assert own == {"lr": 0.1}
    assert px.GatherSpec.from_params(framework) == spec
    assert px.GatherSpec.from_params(own) is None
    with pytest.raises(ValueError, match="malformed gather params"):
        px.GatherSpec.from_params({px.GATHER: "peers"})


def test_the_agent_runtime_gathers_what_arrives_in_time_and_checks_it(
    mosquitto: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """edge_agent.peers.PeerExchange.gather alone (no model): a good peer is used, one with
    the wrong shape and one with NaN are not, a silent one is waited for `wait_s` only."""
    from edge_agent.peers import PeerExchange

    caplog.set_level(logging.WARNING)

    def transport(agent_id: str) -> MqttClientTransport:
        t = MqttClientTransport(
            "127.0.0.1", mosquitto.port, ByteMeter(), agent_id=agent_id, run_id=RUN
        )
        t.connect(WAIT_S)
        return t

    me, senders = transport("me"), {a: transport(a) for a in ("good", "bad-shape", "nan")}
    peers = PeerExchange("me", RUN, ByteMeter())
    exchange = 7
    peers.shared_shapes[(exchange, "soft")] = (1, (PER_ROUND, 10))  # what "me" shared
    nan = soft_predictions(PER_ROUND, seed=3)
    nan[0, 0] = np.nan
    sent = {
        "good": soft_predictions(PER_ROUND, seed=1),
        "bad-shape": soft_predictions(PER_ROUND + 1, seed=2),
        "nan": nan,
    }
    try:
        for a, arr in sent.items():
            result = pb.Result(
                phase=0,
                action="predict",
                tensors=codec.encode_many({"soft": arr}, "float32"),
                metrics={px.EXCHANGE: float(exchange)},
            )
            senders[a].send_to_peers(
                Message(pb.Envelope(agent_id=a, run_id=RUN, round=1, result=result))
            )
        spec = px.GatherSpec("peers", "soft", ("bad-shape", "good", "nan", "silent"), exchange, 1.0)
        part, used = peers.gather(me, 1, spec)
    finally:
        for t in (me, *senders.values()):
            t.close()
    assert part is not None
    np.testing.assert_array_equal(part, sent["good"])
    assert used.tolist() == [0, 1, 0, 0]
    assert f"peer bad-shape sent shape [{PER_ROUND + 1}, 10] as 'soft'" in caplog.text
    assert "unusable 'soft' from peer nan" in caplog.text
    assert "no 'soft' from peer silent in time" in caplog.text

"""Whole runs over MQTT with the real broker: the coordinator (coordinator.service.start)
in this process, agents as `pfl-agent run` processes. The broker restarts once round 1
is done, and the run still completes with every round stored and every final report. A
run through the deployed broker configuration logs in with passwords over TLS. FedH2L
over MQTT exchanges the agents' posteriors through the broker, agent to agent, while the
coordinator keeps the round clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator import report
from coordinator.config import PublicSection, RunConfig, RunSection, ServerSection
from coordinator.service import RunningCoordinator, start
from pfl_edge.broker import Broker
from tests.conftest import SecureBroker
from tests.harness import AgentProcesses, mnist_partitions

pytestmark = pytest.mark.timeout(300)

AGENTS = 3
ROUNDS = 3
RUN = "restart"
WAIT_S = 150.0
"""Upper bound of each wait; a passing run takes far less."""


def run_config(
    tmp: Path, server: ServerSection, rounds: int, agents: int, algorithm: str = "fedmd"
) -> RunConfig:
    return RunConfig(
        run=RunSection(
            id=RUN,
            algorithm=algorithm,
            rounds=rounds,
            min_agents=agents,
            phase_timeout_s=WAIT_S,
            state_dir=str(tmp / "state"),
        ),
        public=PublicSection(dataset="mnist", samples=300, per_round=100),
        server=server,
        algorithm={"local_epochs": 1, "wire": "int8"},
    )


def test_broker_restart_mid_run_loses_no_round(tmp_path: Path, mosquitto: Broker) -> None:
    server = ServerSection(grpc="", mqtt=mosquitto.url)
    running: RunningCoordinator = start(run_config(tmp_path, server, ROUNDS, AGENTS))
    try:
        with AgentProcesses(tmp_path, WAIT_S) as agents:
            for i, data in enumerate(mnist_partitions(tmp_path / "data", AGENTS)):
                agents.spawn(mosquitto.url, f"agent-{i}", data, "--run-id", RUN)
            engine = running.engine
            agents.wait_until(lambda: engine.completed_rounds >= 1, "round 1")
            mosquitto.restart(down_s=1.0)
            restarted_after = engine.completed_rounds
            agents.wait_until(engine.done.is_set, "the end of the run")
            agents.wait_for_exit()
            rounds = running.store.rounds()
            finals = running.store.finals()
    finally:
        running.stop()
    assert restarted_after < ROUNDS, "the run ended before the broker restarted"
    assert [r.round for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r.metrics["participants"] == AGENTS for r in rounds)
    assert sorted(finals) == [f"agent-{i}" for i in range(AGENTS)]
    for i in range(AGENTS):
        log = agents.log(f"agent-{i}")
        assert "lost its connection to the MQTT broker" in log  # the restart was seen
        assert "final test accuracy" in log


def test_run_logs_in_with_passwords_over_tls(
    tmp_path: Path, secure_mosquitto: SecureBroker
) -> None:
    sb = secure_mosquitto
    for user, password in sb.passwords.items():
        (tmp_path / f"{user}.pw").write_text(password + "\n")
    server = ServerSection(
        grpc="",
        mqtt=sb.broker.url,
        mqtt_password_file=str(tmp_path / "coordinator.pw"),
        mqtt_tls_ca=str(sb.certs.ca),
    )
    running = start(run_config(tmp_path, server, rounds=1, agents=1))
    (data,) = mnist_partitions(tmp_path / "data", agents=1)
    login = ("--mqtt-password-file", str(tmp_path / "agent-a.pw"), "--tls-ca", str(sb.certs.ca))
    try:
        with AgentProcesses(tmp_path, WAIT_S) as agents:
            agents.spawn(sb.broker.url, "agent-a", data, "--run-id", RUN, *login)
            agents.wait_for_exit()
            finals = running.store.finals()
    finally:
        running.stop()
    assert list(finals) == ["agent-a"]


def test_fedh2l_over_mqtt_exchanges_the_posteriors_agent_to_agent(
    tmp_path: Path, mosquitto: Broker
) -> None:
    server = ServerSection(grpc="", mqtt=mosquitto.url)
    running = start(run_config(tmp_path, server, rounds=2, agents=AGENTS, algorithm="fedh2l"))
    try:
        with AgentProcesses(tmp_path, WAIT_S) as agents:
            for i, data in enumerate(mnist_partitions(tmp_path / "data", AGENTS)):
                agents.spawn(mosquitto.url, f"agent-{i}", data, "--run-id", RUN)
            agents.wait_for_exit()
            rounds = running.store.rounds()
            through_coordinator = dict(running.engine.tensor_bytes)
            rep = report.build(running.store, running.meter, algorithm="fedh2l")
    finally:
        running.stop()
    assert [r.round for r in rounds] == [1, 2]
    soft_bytes = 100 * 10  # int8 posteriors on the round's 100 public samples
    for r in rounds:
        m = r.metrics
        assert m["participants"] == AGENTS and m["mean_test_acc"] is not None
        # No posterior reached the coordinator: only each agent's used-peer flags (2 bytes).
        assert through_coordinator[r.round] == [AGENTS * 2, 0]
        # Each agent published its posteriors once and got its two peers' from the broker.
        assert 1.9 < m["peer_bytes_down"] / m["peer_bytes_up"] <= 2.0
        assert m["peer_bytes_up"] > AGENTS * soft_bytes
        assert m["bytes_up"] - m["peer_bytes_up"] < AGENTS * soft_bytes  # the coordinator's
        assert 1.9 < m["tensor_bytes_down"] / m["tensor_bytes_up"] <= 2.0
    for a in rep["agents"]:
        assert len(a["test_acc_per_round"]) == 2 and None not in a["test_acc_per_round"]
        assert a["peer_bytes_up"] > 2 * soft_bytes and a["peer_bytes_down"] > 4 * soft_bytes
        assert a["bytes_up"] > a["peer_bytes_up"] and a["bytes_down"] > a["peer_bytes_down"]
    for i in range(AGENTS):
        assert "no 'soft' from peer" not in agents.log(f"agent-{i}")

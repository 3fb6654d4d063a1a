"""Mutual TLS with real `pfl-agent run` processes: an agent whose connection another
process of the same id replaces, or whom the operator removes from the fleet, notices
within seconds, says why and exits instead of hanging; an agent of the fleet gets in."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge_agent.runtime import Agent
from pfl_edge import certs
from pfl_edge.netproxy import CountingProxy
from pfl_edge.transport.credentials import TlsFiles, load_credentials
from tests.agent_threads import SHAPE, config, options, start, wait_until, write_private
from tests.harness import (
    AgentProcesses,
    Coordinator,
    ScriptedAgent,
    agent_tls_options,
    running_coordinator,
    with_mutual_tls,
)

pytestmark = pytest.mark.timeout(120)

NOTICE_S = 10.0
"""How soon a cut-off agent process must have noticed and exited."""


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    folder = tmp_path / "fleet"
    certs.init_fleet(folder, ["127.0.0.1"])
    for agent_id in ("a", "b"):
        certs.add_agent(folder, agent_id)
    return folder


@pytest.fixture
def coord(tmp_path: Path, fleet: Path) -> Iterator[Coordinator]:
    # min_agents 3: no round starts, so the agents only register and wait.
    cfg = with_mutual_tls(config(tmp_path, algorithm="local", min_agents=3), fleet)
    with running_coordinator(cfg) as c:
        yield c


def spawn(procs: AgentProcesses, coord: Coordinator, fleet: Path, agent_id: str, name: str) -> None:
    procs.spawn(
        f"grpc://{coord.target}",
        agent_id,
        write_private(procs.tmp / f"{name}.npz"),
        *agent_tls_options(fleet, agent_id, procs.tmp / f"{name}-device"),
        "--give-up-after",
        "20",
        name=name,
    )


def exited_within(procs: AgentProcesses, name: str, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while (code := procs.procs[name].poll()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} still running {seconds} s later:\n{procs.log(name)}")
        time.sleep(0.05)
    return code


def test_replaced_agent_process_says_so_and_exits(
    tmp_path: Path, coord: Coordinator, fleet: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pfl_edge.coordinator")
    with AgentProcesses(tmp_path, wait_s=60) as procs:
        spawn(procs, coord, fleet, "a", "first")
        procs.wait_until(lambda: "a" in coord.engine.agents, "a to register")
        spawn(procs, coord, fleet, "a", "second")
        procs.wait_until(lambda: "agent a reconnected" in caplog.text, "the second process")
        assert exited_within(procs, "first", NOTICE_S) == 2
        assert "replaced by a newer connection of agent a" in procs.log("first")
        assert procs.procs["second"].poll() is None, "the newer process stays"
        assert coord.engine.is_connected("a")


def test_removed_agent_is_cut_off_and_cannot_come_back(
    tmp_path: Path, coord: Coordinator, fleet: Path
) -> None:
    with AgentProcesses(tmp_path, wait_s=60) as procs:
        spawn(procs, coord, fleet, "b", "b")
        procs.wait_until(
            lambda: coord.engine.is_connected("b") and "b" in coord.store.agents(),
            "b to register (and its registration to be written)",
        )
        rows_before = coord.store.agents()
        certs.remove_agent(fleet, "b")
        code = exited_within(procs, "b", NOTICE_S)
        log = procs.log("b")
        assert code == 2, log
        assert "removed from the fleet" in log
        assert "refused this agent" in log, "its reconnection was refused too"
        assert coord.store.agents() == rows_before


def test_agent_refused_as_busy_backs_off_and_gets_in(
    tmp_path: Path, fleet: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # 0.5 registrations per second, bursts of 5: the scripted agents take the burst.
    cfg = with_mutual_tls(
        config(tmp_path, algorithm="local", min_agents=3), fleet, register_rate=0.5
    )
    with running_coordinator(cfg) as coord:
        tls = agent_tls_options(fleet, "b", tmp_path / "b-device")
        scripted = [_mutual_tls_agent(coord, fleet, "a") for _ in range(5)]
        agent = Agent(
            replace(
                options(tmp_path, coord.target, "b"),
                credentials=load_credentials(tls_ca=tls[1], tls_cert=tls[3], tls_key=tls[5]),
                give_up_after_s=30.0,
            )
        )
        outcome: dict[str, Any] = {}
        start(agent, outcome)
        wait_until(
            lambda: "b" in coord.engine.agents and coord.engine.is_connected("b"),
            "b to get in",
        )
        for s in scripted:
            s.close()
    assert "coordinator busy (RESOURCE_EXHAUSTED: too many registrations" in caplog.text
    assert "error" not in outcome


def _mutual_tls_agent(coord: Coordinator, fleet: Path, agent_id: str) -> ScriptedAgent:
    folder = fleet / "agents" / agent_id
    tls = TlsFiles(*(str(folder / f) for f in ("ca.crt", "agent.crt", "agent.key")))
    agent = ScriptedAgent(coord.target, agent_id, tls=tls)
    agent.register(input_shape=SHAPE)
    return agent


def test_agent_notices_a_silently_dead_link_and_redials(
    tmp_path: Path, coord: Coordinator, fleet: Path
) -> None:
    proxy = CountingProxy(("127.0.0.1", coord.server.port)).start()
    try:
        with AgentProcesses(tmp_path, wait_s=60) as procs:
            procs.spawn(
                f"grpc://127.0.0.1:{proxy.port}",
                "a",
                write_private(tmp_path / "a.npz"),
                *agent_tls_options(fleet, "a", tmp_path / "a-device"),
                "--keepalive",
                "1",
            )
            procs.wait_until(
                lambda: "a" in coord.engine.agents and coord.engine.is_connected("a"),
                "a to register",
            )
            proxy.blackhole()  # no FIN, no RST: the path just stops carrying bytes
            cut = time.monotonic()
            procs.wait_until(lambda: "connection lost" in procs.log("a"), "a to notice")
            assert time.monotonic() - cut < NOTICE_S
            assert "reconnecting" in procs.log("a")
            assert procs.procs["a"].poll() is None, "it keeps trying, it does not exit"
    finally:
        proxy.stop()

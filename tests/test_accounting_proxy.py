"""Byte accounting against the socket: a counting TCP proxy between two agents and the
coordinator sees within 3% of what both sides' meters count for a round. The gap is
HTTP/2 framing (9-byte frame headers, WINDOW_UPDATE and PING frames) that gRPC adds
below the messages we count."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from pfl_edge.accounting import ByteMeter
from pfl_edge.netproxy import CountingProxy
from tests.harness import ScriptedAgent, make_config, running_coordinator, soft_predictions

PER_ROUND = 200


def test_accounting_matches_socket_bytes_within_3_percent(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, min_agents=2, rounds=1)
    cfg = replace(cfg, public=replace(cfg.public, per_round=PER_ROUND))
    with running_coordinator(cfg) as coord:
        proxy = CountingProxy(("127.0.0.1", coord.server.port)).start()
        try:
            meters = {name: ByteMeter() for name in ("a", "b")}
            agents = {n: ScriptedAgent(f"127.0.0.1:{proxy.port}", n, meters[n]) for n in meters}
            for agent in agents.values():
                agent.register()
            tasks = {n: a.expect("task") for n, a in agents.items()}
            time.sleep(0.3)  # let connection set-up traffic settle before counting
            proxy.reset()
            coord_before = coord.meter.total()
            agents_before = sum(m.total() for m in meters.values())
            for n, a in agents.items():
                a.answer(tasks[n], {"soft": soft_predictions(PER_ROUND)})
            distill = {n: a.expect("task") for n, a in agents.items()}
            for n, a in agents.items():
                a.answer(distill[n], metrics={"test_acc": 0.5})
            for a in agents.values():
                assert a.expect("task").task.action == "finish"
            time.sleep(0.3)
            socket = proxy.counts()
            counted = coord.meter.total() - coord_before
        finally:
            proxy.stop()
    agent_counted = sum(m.total() for m in meters.values()) - agents_before
    assert counted == agent_counted, "the two sides' meters disagree"
    assert socket.up + socket.down > 30_000
    assert counted <= socket.up + socket.down
    assert counted == pytest.approx(socket.up + socket.down, rel=0.03)
    assert coord.meter.total(round_=1, direction="up") == pytest.approx(socket.up, rel=0.03)

"""KT-pFL end to end over real gRPC on loopback: the coordinator (coordinator.service.start)
in this process, 4 `pfl-agent run` processes with two architectures, 2 rounds. The run
completes, c is saved each round and drawn, and the coordinator's HTTP endpoint serves
c with the 4 agent ids while the run is up."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.config import PublicSection, RunConfig, RunSection, ServerSection
from coordinator.inspection import csv_path, heatmap_path, read_csv
from coordinator.service import start
from pfl_edge.transport.grpc_server import GrpcServerTransport
from tests.harness import AgentProcesses, mnist_partitions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

AGENTS = 4
ROUNDS = 2
MODELS = ("lenet5", "alexnet_small")
WAIT_S = 180.0


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def test_ktpfl_run_over_grpc_saves_draws_and_serves_c(tmp_path: Path) -> None:
    parts = mnist_partitions(tmp_path / "data", AGENTS)
    out = tmp_path / "out"
    cfg = RunConfig(
        run=RunSection(
            id="ktpfl-e2e",
            algorithm="kt-pfl",
            rounds=ROUNDS,
            min_agents=AGENTS,
            phase_timeout_s=WAIT_S,
            state_dir=str(tmp_path / "state"),
        ),
        public=PublicSection(dataset="mnist", samples=300, per_round=100),
        server=ServerSection(grpc="127.0.0.1:0", http="127.0.0.1:0"),
        algorithm={"local_epochs": 1, "wire": "int8"},
    )
    running = start(cfg, out)
    grpc = running.transport("grpc")
    assert isinstance(grpc, GrpcServerTransport) and running.http is not None
    base = running.http.address
    try:
        with AgentProcesses(tmp_path, WAIT_S) as agents:
            for i, data in enumerate(parts):
                url = f"grpc://127.0.0.1:{grpc.port}"
                agents.spawn(url, f"agent-{i}", data, model=MODELS[i % len(MODELS)])
            agents.wait_until(
                lambda: get_json(base + "/inspect")["round"] == ROUNDS,
                f"c of round {ROUNDS} on the endpoint",
            )
            served = get_json(base + "/inspect/c")
            status = get_json(base + "/status")
            agents.wait_until(running.engine.done.is_set, "the end of the run")
            agents.wait_for_exit()
            rounds = running.store.rounds()
            finals = running.store.finals()
    finally:
        running.stop()

    ids = [f"agent-{i}" for i in range(AGENTS)]
    assert [r.round for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r.metrics["participants"] == AGENTS for r in rounds)
    assert sorted(finals) == ids
    assert status["algorithm"] == "kt-pfl" and status["run_id"] == "ktpfl-e2e"
    assert (status["round"], status["agents"]) == (ROUNDS, AGENTS)

    assert served["round"] == ROUNDS
    assert served["rows"] == served["columns"] == ids
    c = np.array(served["matrix"], dtype=np.float64)
    assert c.shape == (AGENTS, AGENTS) and np.isfinite(c).all()
    assert (c >= 0).all()
    np.testing.assert_allclose(c.sum(axis=0), 1.0, atol=1e-9)  # each student's weights
    # Two c steps move it off the uniform start (by about 1e-3 at this size), and every
    # student weighs its own predictions above 1/N (they agree with it best).
    assert np.abs(c - 1 / AGENTS).max() > 1e-4, "c did not move from uniform"
    assert (np.diag(c) > 1 / AGENTS).all(), np.diag(c)

    for rnd in range(1, ROUNDS + 1):
        saved = read_csv(csv_path(out, "c", rnd))
        assert saved.rows == tuple(ids)
    np.testing.assert_allclose(read_csv(csv_path(out, "c", ROUNDS)).matrix, c, atol=1e-12)
    assert heatmap_path(out, "c").stat().st_size > 5_000

"""KT-pFL end to end over real gRPC on loopback: the coordinator (coordinator.service.start)
in this process, 4 `pfl-agent run` processes with two architectures, 2 rounds. The run
completes, c is saved each round and drawn, and the coordinator's HTTP endpoint serves
c with the 4 agent ids while the run is up."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.config import PublicSection, RunConfig, RunSection, ServerSection
from coordinator.inspection import csv_path, heatmap_path, read_csv
from coordinator.service import start
from pfl_edge.cli import write_partitions
from pfl_edge.transport.grpc_server import GrpcServerTransport

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

AGENTS = 4
ROUNDS = 2
MODELS = ("lenet5", "alexnet_small")
WAIT_S = 180.0


def wait_until(
    cond: Callable[[], bool], what: str, agents: dict[str, subprocess.Popen[bytes]], tmp: Path
) -> None:
    """Wait for `cond`; fail at once when an agent process exits with an error."""
    deadline = time.monotonic() + WAIT_S
    while not cond():
        failed = [a for a, p in agents.items() if p.poll() not in (None, 0)]
        if failed:
            log = (tmp / f"{failed[0]}.log").read_text(errors="replace")
            raise AssertionError(f"{failed[0]} failed while waiting for {what}:\n{log}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(0.1)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def test_ktpfl_run_over_grpc_saves_draws_and_serves_c(tmp_path: Path) -> None:
    parts = write_partitions(
        argparse.Namespace(
            dataset="mnist",
            agents=AGENTS,
            noniid="dirichlet",
            alpha=0.5,
            classes_per_agent=2,
            samples_per_agent=120,
            test_fraction=0.25,
            seed=0,
        ),
        tmp_path / "data",
    )
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
    agents: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i, data in enumerate(parts):
            agent_id = f"agent-{i}"
            cmd = [
                sys.executable,
                "-m",
                "edge_agent.cli",
                "run",
                "--coordinator",
                f"grpc://127.0.0.1:{grpc.port}",
                "--model",
                MODELS[i % len(MODELS)],
                "--data",
                str(data),
                "--agent-id",
                agent_id,
                "--out",
                str(tmp_path / agent_id),
                "--cache-dir",
                str(tmp_path / agent_id / "cache"),
                "--threads",
                "1",
            ]
            with (tmp_path / f"{agent_id}.log").open("wb") as log:
                agents[agent_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until(
            lambda: get_json(base + "/inspect")["round"] == ROUNDS,
            f"c of round {ROUNDS} on the endpoint",
            agents,
            tmp_path,
        )
        served = get_json(base + "/inspect/c")
        status = get_json(base + "/status")
        wait_until(running.engine.done.is_set, "the end of the run", agents, tmp_path)
        wait_until(
            lambda: all(p.poll() == 0 for p in agents.values()),
            "the agents' exit",
            agents,
            tmp_path,
        )
        rounds = running.store.rounds()
        finals = running.store.finals()
    finally:
        for p in agents.values():
            if p.poll() is None:
                p.kill()
                p.wait()
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

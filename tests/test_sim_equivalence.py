"""The in-process simulation is the deployment's code: the same run served over real gRPC
to `pfl-agent run` processes and to the in-process fleet gives the same accuracies and
the same bytes.

Accuracies are compared exactly: every agent runs on one torch thread in both, seeds
its model and its shuffling alike, and the strategy sums replies in agent order, so no
float result depends on which process or thread computed it or in which order replies
came. Bytes: tensor bytes are equal; wire bytes differ only by the envelopes' run id
(`pfl-agent run` sends "default" over gRPC, the simulated agents the run's id) and
message sequence numbers, and must agree within 1 %. Round 0 (the public set, which the
simulated agents have at hand and the processes download) is left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.config import PublicSection, RunConfig, RunSection, ServerSection
from coordinator.service import finish, start
from coordinator.sim.run import SimAgent, run_inprocess
from pfl_edge.data.partition import load_client
from pfl_edge.transport.grpc_server import GrpcServerTransport
from tests.harness import AgentProcesses, mnist_partitions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

AGENTS = 3
ROUNDS = 2
MODELS = ("lenet5", "alexnet_small")
WAIT_S = 200.0


def config(tmp: Path, algorithm: str, where: str) -> RunConfig:
    return RunConfig(
        run=RunSection(
            id="equal",
            algorithm=algorithm,
            rounds=ROUNDS,
            min_agents=AGENTS,
            phase_timeout_s=WAIT_S,
            state_dir=str(tmp / where / "state"),
        ),
        public=PublicSection(dataset="mnist", samples=300, per_round=60),
        server=ServerSection(grpc="127.0.0.1:0", http=""),
        algorithm={"local_epochs": 1, "wire": "int8"},
    )


def over_grpc(tmp: Path, algorithm: str, parts: list[Path]) -> dict[str, Any]:
    out = tmp / "grpc"
    running = start(config(tmp, algorithm, "grpc"), out)
    grpc = running.transport("grpc")
    assert isinstance(grpc, GrpcServerTransport)
    try:
        with AgentProcesses(tmp / "procs", WAIT_S) as agents:
            for i, data in enumerate(parts):
                url = f"grpc://127.0.0.1:{grpc.port}"
                agents.spawn(url, f"agent-{i:02d}", data, model=MODELS[i % len(MODELS)])
            agents.wait_until(running.engine.done.is_set, "the end of the run")
            agents.wait_for_exit()
    except BaseException:
        running.stop()
        raise
    return json.loads(finish(running, out).read_text())  # type: ignore[no-any-return]


def in_process(tmp: Path, algorithm: str, parts: list[Path]) -> dict[str, Any]:
    agents = [
        SimAgent(f"agent-{i:02d}", MODELS[i % len(MODELS)], load_client(p))
        for i, p in enumerate(parts)
    ]
    result = run_inprocess(config(tmp, algorithm, "sim"), agents, tmp / "sim")
    assert result.errors == []
    return json.loads(result.report.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("algorithm", ["kt-pfl", "fedmd", "fedh2l"])
def test_grpc_and_inprocess_runs_agree(tmp_path: Path, algorithm: str) -> None:
    (tmp_path / "procs").mkdir()
    parts = mnist_partitions(tmp_path / "data", AGENTS)
    net = over_grpc(tmp_path, algorithm, parts)
    sim = in_process(tmp_path, algorithm, parts)

    def accs(report: dict[str, Any]) -> dict[str, Any]:
        return {a["id"]: (a["test_acc_per_round"], a["final_test_acc"]) for a in report["agents"]}

    assert accs(sim) == accs(net)
    assert all(len(per_round) == ROUNDS for per_round, _ in accs(sim).values())
    for n, s in zip(net["rounds"], sim["rounds"], strict=True):
        assert s["round"] == n["round"] and s["participants"] == n["participants"] == AGENTS
        assert s["tensor_bytes_up"] == n["tensor_bytes_up"] > 0
        assert s["tensor_bytes_down"] == n["tensor_bytes_down"]
        for key in ("bytes_up", "bytes_down"):
            assert s[key] == pytest.approx(n[key], rel=0.01), (key, n["round"])

"""`pfl-edge sim`: a whole run in one process, on the deployment's code.

The coordinator service starts as `pfl-coordinator serve` would (engine and round core,
SQLite state, inspection files, report), with no listener: its one transport is a fleet
of real edge agents in this process (coordinator.sim.inprocess). The outputs are the
demo's: report.json, report.png, inspect/ and the strategy's heatmaps in `out`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coordinator import service
from coordinator.config import PublicSection, RunConfig, RunSection, ServerSection
from coordinator.sim.inprocess import InProcessFleet
from coordinator.strategies.base import Strategy
from edge_agent.runtime import Agent, AgentOptions
from pfl_edge.accounting import ByteMeter
from pfl_edge.data.partition import ClientData, PartitionSpec, agent_ids, client_data
from pfl_edge.values import Scalar

log = logging.getLogger("pfl_edge.sim")

PROGRESS_INTERVAL_S = 10.0

NO_DEADLINE_S = 7 * 24 * 3600.0
"""Phase and finish timeouts of a simulation: its agents cannot vanish, so a phase of a
large fleet taking turns on one thread is waited for however long it takes."""


@dataclass(frozen=True)
class SimSettings:
    algorithm: str
    partition: PartitionSpec
    """The agents' private data (and how many agents)."""
    rounds: int = 5
    models: tuple[str, ...] = ("lenet5",)
    """Architectures, dealt round-robin."""
    out: Path = Path("runs/sim")
    public_samples: int = 5000
    public_per_round: int = 500
    sample_fraction: float = 1.0
    params: Mapping[str, Scalar] = field(default_factory=dict)
    """[algorithm] parameters (pfl_edge.params.COMMON and the strategy's own)."""
    export_onnx: bool = True
    threads: int = 1
    """torch intra-op threads of the agents' work."""


def config(s: SimSettings) -> RunConfig:
    """The run's configuration: the service's, with no listener."""
    return RunConfig(
        run=RunSection(
            id="sim",
            algorithm=s.algorithm,
            rounds=s.rounds,
            min_agents=s.partition.agents,
            sample_fraction=s.sample_fraction,
            phase_timeout_s=NO_DEADLINE_S,
            finish_timeout_s=NO_DEADLINE_S,
            seed=s.partition.seed,
            state_dir=str(s.out / "state"),
        ),
        public=PublicSection(
            dataset="mnist", samples=s.public_samples, per_round=s.public_per_round
        ),
        server=ServerSection(grpc=""),  # run_inprocess sets what a simulation needs
        algorithm={"seed": s.partition.seed, **s.params},
    )


@dataclass(frozen=True)
class SimAgent:
    agent_id: str
    model: str
    data: ClientData


@dataclass(frozen=True)
class SimResult:
    report: Path
    errors: list[str]
    """Refusals and failures in the fleet (none in a healthy run)."""
    strategy: Strategy
    """The run's strategy after its last round."""
    params: dict[str, Scalar]
    """The run's parameters, defaults filled in."""


def simulate(s: SimSettings) -> SimResult:
    """Partition the data as `s` says and run it in process (run_inprocess)."""
    log.info(
        "partitioning %s for %d agents (%s, %d samples each)",
        s.partition.dataset,
        s.partition.agents,
        s.partition.noniid,
        s.partition.samples_per_agent,
    )
    datasets = client_data(s.partition)
    agents = [
        SimAgent(agent_id, s.models[i % len(s.models)], data)
        for i, (agent_id, data) in enumerate(zip(agent_ids(len(datasets)), datasets, strict=True))
    ]
    return run_inprocess(
        config(s),
        agents,
        s.out,
        seed=s.partition.seed,
        export_onnx=s.export_onnx,
        threads=s.threads,
    )


def run_inprocess(
    cfg: RunConfig,
    agents: Sequence[SimAgent],
    out: Path,
    *,
    seed: int = 0,
    export_onnx: bool = True,
    threads: int = 1,
    strategy: type[Strategy] | None = None,
) -> SimResult:
    """Serve `cfg` to `agents` in this process (agent seed `seed`, as `pfl-agent run
    --seed`). `cfg`'s listeners are ignored: the in-process fleet is the run's one
    transport. `strategy` replaces the coordinator half of the run's algorithm."""
    for old in (Path(cfg.run.state_dir), out / "agents", out / "inspect"):
        if old.exists():
            shutil.rmtree(old)
    # No listener, no HTTP endpoint, and no registration rate: the fleet is this process.
    cfg = dataclasses.replace(
        cfg, server=dataclasses.replace(cfg.server, grpc="", mqtt="", http="", register_rate=1e9)
    )
    fleets: list[InProcessFleet] = []

    def make_fleet(meter: ByteMeter) -> InProcessFleet:
        fleets.append(InProcessFleet(meter, cfg.server.chunk_bytes, cfg.server.max_message_bytes))
        return fleets[0]

    running = service.start(cfg, out, fleets=[make_fleet], strategy=strategy)
    (fleet,) = fleets
    engine = running.engine
    public = (engine.public.images, engine.public.info.sha256)
    quiet = logging.getLogger("pfl_edge.agent")
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))  # a line per agent per round is too many
    try:
        for a in agents:
            opts = AgentOptions(
                agent_id=a.agent_id,
                coordinator="inprocess://",
                model=a.model,
                data=Path(f"{a.agent_id}.npz"),
                out_dir=out / "agents" / a.agent_id,
                run_id=cfg.run.id,
                num_classes=cfg.public.num_classes,
                seed=seed,
                threads=threads,
                save_state="off",
                export_onnx=export_onnx,
            )
            fleet.add(functools.partial(Agent, opts, data=a.data, public=public))
        started = time.monotonic()
        while not engine.done.wait(PROGRESS_INTERVAL_S):
            if not running.thread.is_alive():
                break
            log.info("%s, %.0f s", engine.progress(), time.monotonic() - started)
        fleet.finished.wait(30.0)
    finally:
        quiet.setLevel(level)
    return SimResult(service.finish(running, out), fleet.errors, engine.strategy, engine.params)

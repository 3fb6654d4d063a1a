"""A real coordinator (engine + gRPC server + SQLite) in the test process, a scripted
agent that speaks the wire protocol by hand, so tests can send exactly what they mean,
and real agents as `pfl-agent run` processes (`AgentProcesses`)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.config import PublicSection, RunConfig, RunSection, ServerSection
from coordinator.service import RunningCoordinator, start
from pfl_edge import codec, public_data
from pfl_edge.accounting import ByteMeter
from pfl_edge.data.partition import PartitionSpec, write_partitions
from pfl_edge.demo import agent_command, agent_tls_arguments
from pfl_edge.framing import Message
from pfl_edge.transport.base import TransportClosed
from pfl_edge.transport.credentials import TlsFiles
from pfl_edge.transport.grpc_client import GrpcClientTransport
from pfl_edge.transport.grpc_server import GrpcServerTransport
from pfl_edge.v1 import messages_pb2 as pb

SAMPLE_SHAPE = (1, 8, 8)
NUM_CLASSES = 10


def write_public(path: Path, n: int = 200, seed: int = 0) -> Path:
    images = np.random.default_rng(seed).integers(0, 256, (n, *SAMPLE_SHAPE), dtype=np.uint8)
    np.savez(path, x=images)
    return path


def make_config(tmp: Path, **run: Any) -> RunConfig:
    return RunConfig(
        run=RunSection(
            **{
                "id": "t",
                "algorithm": "fedmd",
                "rounds": 2,
                "min_agents": 1,
                "phase_timeout_s": 30.0,
                "state_dir": str(tmp / "state"),
                **run,
            }
        ),
        public=PublicSection(
            dataset=str(write_public(tmp / "public.npz")),
            samples=200,
            per_round=50,
            num_classes=NUM_CLASSES,
        ),
        server=ServerSection(grpc="127.0.0.1:0"),
        algorithm={"wire": "float32"},
    )


def stored_agents(coord: Coordinator) -> dict[str, tuple[dict[str, Any], str]]:
    """The store's registrations once the engine has written all it took (it batches)."""
    coord.engine.flushed().result(10.0)
    return coord.store.agents()


class Coordinator:
    """A started coordinator and what tests look at."""

    def __init__(self, running: RunningCoordinator) -> None:
        self.running = running
        self.engine = running.engine
        self.store = running.store
        self.meter = running.meter
        transport = running.transport("grpc")
        assert isinstance(transport, GrpcServerTransport)
        self.server = transport

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@contextmanager
def running_coordinator(cfg: RunConfig) -> Iterator[Coordinator]:
    """The real coordinator (engine, SQLite, gRPC on a free port), stopped afterwards."""
    running = start(cfg)
    try:
        yield Coordinator(running)
    finally:
        running.stop()


class ScriptedAgent:
    """Speaks the protocol step by step over a real gRPC connection."""

    def __init__(
        self,
        target: str,
        agent_id: str,
        meter: ByteMeter | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.meter = meter or ByteMeter()
        self.t = GrpcClientTransport(target, self.meter, tls=tls)
        self.t.connect(5)
        self.seq = 0

    def send(self, rnd: int = 0, agent_id: str | None = None, **body: Any) -> None:
        self.seq += 1
        self.t.send(
            Message(
                pb.Envelope(agent_id=agent_id or self.agent_id, round=rnd, seq=self.seq, **body)
            )
        )

    def register(
        self, num_classes: int = NUM_CLASSES, input_shape: tuple[int, ...] = SAMPLE_SHAPE
    ) -> pb.RunConfig:
        self.send(
            register=pb.Register(
                model=pb.ModelInfo(
                    architecture="scripted",
                    parameter_count=1000,
                    input_shape=list(input_shape),
                    num_classes=num_classes,
                ),
                num_train_samples=100,
                num_test_samples=20,
            )
        )
        return self.expect("run_config").run_config

    def expect(self, kind: str, timeout: float = 10.0) -> pb.Envelope:
        msg = self.t.recv(timeout)
        if msg is None:
            raise AssertionError(f"no {kind} within {timeout} s")
        env = msg.envelope
        got = env.WhichOneof("body")
        if got != kind:
            raise AssertionError(f"expected {kind}, got {got}: {env}")
        return env

    def refusal(self, timeout: float = 10.0) -> TransportClosed:
        """The error that closed the stream (after a refused message)."""
        try:
            while True:
                if self.t.recv(timeout) is None:
                    raise AssertionError("the coordinator did not refuse the message")
        except TransportClosed as exc:
            return exc

    def answer(
        self,
        task_env: pb.Envelope,
        tensors: dict[str, np.ndarray] | None = None,
        wire: codec.WireFormat | None = "float32",
        **fields: Any,
    ) -> None:
        """Send the Result for a task (fields override phase/action)."""
        task = task_env.task
        result = pb.Result(
            phase=fields.pop("phase", task.phase),
            action=fields.pop("action", task.action),
            tensors=codec.encode_many(tensors or {}, wire),
            metrics=fields.pop("metrics", {"test_acc": 0.5}),
        )
        self.send(fields.pop("round", task_env.round), result=result, **fields)

    def close(self) -> None:
        self.t.close()


def soft_predictions(count: int, seed: int = 0) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=(count, NUM_CLASSES))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray((e / e.sum(axis=1, keepdims=True)).astype(np.float32))


def public_indices(task_env: pb.Envelope, num_samples: int) -> np.ndarray:
    return public_data.resolve(task_env.task.public, num_samples)


def with_run(cfg: RunConfig, **run: Any) -> RunConfig:
    return replace(cfg, run=replace(cfg.run, **run))


def mnist_partitions(out: Path, agents: int) -> list[Path]:
    """MNIST train data for `agents` agents under `out`: Dirichlet(0.5), 120 samples each."""
    spec = PartitionSpec(agents, alpha=0.5, samples_per_agent=120)
    return write_partitions(spec, out)


class AgentProcesses:
    """`pfl-agent run` processes, each logging to <tmp>/<agent id>.log with its outputs
    under <tmp>/<agent id>/; those still running are killed on leaving the `with`."""

    def __init__(self, tmp: Path, wait_s: float) -> None:
        self.tmp = tmp
        self.wait_s = wait_s
        """Upper bound of each wait."""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> AgentProcesses:
        return self

    def __exit__(self, *_exc: object) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    def spawn(
        self,
        coordinator: str,
        agent_id: str,
        data: Path,
        *extra: str,
        model: str = "lenet5",
        name: str | None = None,
    ) -> None:
        """Start agent `agent_id`; `name` (default: the id) keys its process, log and
        folder, for two processes of one id."""
        name = name or agent_id
        cmd = agent_command(coordinator, agent_id, model, data, self.tmp / name, *extra)
        with (self.tmp / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def wait_until(self, cond: Callable[[], bool], what: str) -> None:
        """Wait for `cond`; fail at once when an agent process exits with an error."""
        deadline = time.monotonic() + self.wait_s
        while not cond():
            failed = [a for a, p in self.procs.items() if p.poll() not in (None, 0)]
            if failed:
                raise AssertionError(
                    f"{failed[0]} failed while waiting for {what}:\n{self.log(failed[0])}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {self.wait_s} s waiting for {what}")
            time.sleep(0.05)

    def wait_for_exit(self) -> None:
        """Wait until every agent has exited successfully."""
        self.wait_until(lambda: all(p.poll() == 0 for p in self.procs.values()), "the agents' exit")


def with_mutual_tls(cfg: RunConfig, fleet_dir: Path, **server: Any) -> RunConfig:
    """`cfg` serving gRPC over mutual TLS with the fleet of `pfl_edge.certs` in `fleet_dir`
    (its registry admits the agents added there); `server` overrides further [server] keys."""
    return replace(
        cfg,
        server=replace(
            cfg.server,
            grpc_tls_cert=str(fleet_dir / "coordinator.crt"),
            grpc_tls_key=str(fleet_dir / "coordinator.key"),
            grpc_tls_client_ca=str(fleet_dir / "ca.crt"),
            fleet=str(fleet_dir / "fleet.toml"),
            **server,
        ),
    )


def agent_tls_options(fleet_dir: Path, agent_id: str, device: Path) -> list[str]:
    """`pfl-agent run` options for agent `agent_id` of the fleet in `fleet_dir`, its files
    copied to `device` as an operator would (removing the agent from the fleet deletes
    the fleet's copy)."""
    folder = device / "tls"
    shutil.copytree(fleet_dir / "agents" / agent_id, folder, dirs_exist_ok=True)
    return agent_tls_arguments(folder)

"""How far the round core and the in-process simulation scale (issue 12).

Two parts, each run in a fresh process so that its peak memory is its own:

- `core`: the coordinator's engine (round core, real strategy, SQLite store, codec) with
  a fake fleet that answers every task at once with a pre-encoded reply: what the
  coordinator itself spends per round and on registering N agents.
- `inprocess`: `pfl-edge sim`'s backend, N real agents (lenet5, the cheapest to train,
  40 private samples, 1 local epoch, 100 public samples per round) for a few rounds.

    python -m benchmarks.sim_scale                      # the committed figures
    python -m benchmarks.sim_scale --core 1000 --inprocess 100   # a quick look

Writes benchmarks/results/sim_scale.json: a `results` list with backend, agents, rounds,
seconds, peak_rss_bytes per run (and the part's own figures).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PUBLIC_PER_ROUND = 100
ROUNDS = 3


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def core_run(agents: int, algorithm: str) -> dict[str, Any]:
    """The engine against a fake fleet of `agents`; registration time and per-round CPU."""
    from coordinator import service
    from coordinator.config import PublicSection, RunConfig, RunSection, ServerSection
    from coordinator.engine import Engine
    from pfl_edge import codec
    from pfl_edge.core.rounds import FINISH
    from pfl_edge.framing import Message
    from pfl_edge.transport.base import Inbound, ServerTransport
    from pfl_edge.v1 import messages_pb2 as pb

    soft = np.full((PUBLIC_PER_ROUND, 10), 0.1, np.float32)
    blobs: codec.Blobs = []
    soft_tensors = codec.encode_many({"soft": soft}, "int8", blobs)

    class FakeFleet(ServerTransport):
        """Answers each task at once: soft predictions in phase 0, metrics after."""

        name = "fake"

        def __init__(self) -> None:
            self.inbound: Inbound | None = None
            self.seq: dict[str, int] = {}

        def start(self, inbound: Inbound) -> None:
            self.inbound = inbound

        def send(self, agent_id: str, msg: Message) -> bool:
            env = msg.envelope
            if not env.HasField("task") or self.inbound is None:
                return True
            task = env.task
            self.seq[agent_id] = self.seq.get(agent_id, 1) + 1
            phase0 = task.phase == 0 and task.action != FINISH
            result = pb.Result(
                phase=task.phase,
                action=task.action,
                tensors=soft_tensors if phase0 else [],
                metrics={} if phase0 else {"test_acc": 0.5},
            )
            reply = pb.Envelope(
                agent_id=agent_id, run_id="scale", round=env.round, seq=self.seq[agent_id]
            )
            reply.result.CopyFrom(result)
            self.inbound.on_message(agent_id, Message(reply, list(blobs) if phase0 else []))
            return True

        def disconnect(self, agent_id: str, code: int, reason: str) -> None:
            return None

        def stop(self, grace_s: float = 1.0) -> None:
            return None

        @property
        def address(self) -> str:
            return "fake://"

    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(
            run=RunSection(
                id="scale",
                algorithm=algorithm,
                rounds=ROUNDS,
                min_agents=agents,
                phase_timeout_s=3600.0,
                state_dir=str(Path(tmp) / "state"),
            ),
            public=PublicSection(dataset="mnist", samples=1000, per_round=PUBLIC_PER_ROUND),
            server=ServerSection(grpc="", http="", register_rate=1e9),
            algorithm={"wire": "int8"},
        )
        fleet = FakeFleet()
        running = service.start(cfg, Path(tmp), fleets=[lambda _m: fleet])
        engine: Engine = running.engine
        registers = [
            pb.Envelope(
                agent_id=f"a{i:05d}",
                run_id="scale",
                seq=1,
                register=pb.Register(
                    model=pb.ModelInfo(
                        architecture="lenet5",
                        parameter_count=61706,
                        input_shape=[1, 28, 28],
                        num_classes=10,
                    ),
                    num_train_samples=40,
                ),
            )
            for i in range(agents)
        ]
        started = time.perf_counter()
        futures: list[Future[list[Message]]] = [
            engine.submit("fake", None, Message(env)) for env in registers
        ]
        registered = threading.Event()
        futures[-1].add_done_callback(lambda _f: registered.set())
        registered.wait()
        registration_s = time.perf_counter() - started
        refused = sum(f.exception() is not None for f in futures)
        engine.done.wait()
        wall_s = time.perf_counter() - started
        rounds = [r.metrics for r in running.store.rounds()]
        service.finish(running, Path(tmp))
    cpu = [r["coordinator_cpu_s"] for r in rounds]
    return {
        "backend": "core",
        "algorithm": algorithm,
        "agents": agents,
        "rounds": len(rounds),
        "seconds": wall_s,
        "registration_s": registration_s,
        "refused_registrations": refused,
        "coordinator_cpu_s_per_round": cpu,
        "orchestration_s_per_round": [r["orchestration_s"] for r in rounds],
        "peak_rss_bytes": peak_rss_bytes(),
    }


def inprocess_run(agents: int, algorithm: str) -> dict[str, Any]:
    from coordinator.sim.run import SimSettings, simulate
    from pfl_edge.data.partition import PartitionSpec

    with tempfile.TemporaryDirectory() as tmp:
        settings = SimSettings(
            algorithm=algorithm,
            partition=PartitionSpec(agents, samples_per_agent=50, test_fraction=0.2),
            rounds=ROUNDS,
            models=("lenet5",),
            out=Path(tmp),
            public_samples=1000,
            public_per_round=PUBLIC_PER_ROUND,
            params={"local_epochs": 1, "wire": "int8"},
            export_onnx=False,
        )
        started = time.perf_counter()
        result = simulate(settings)
        seconds = time.perf_counter() - started
        report = json.loads(result.report.read_text())
    rss = peak_rss_bytes()
    return {
        "backend": "inprocess",
        "algorithm": algorithm,
        "agents": agents,
        "rounds": len(report["rounds"]),
        "seconds": seconds,
        "rounds_per_s": len(report["rounds"]) / seconds,
        "round_wall_s": [r["wall_s"] for r in report["rounds"]],
        "mean_test_acc": [r["mean_test_acc"] for r in report["rounds"]],
        "errors": result.errors,
        "peak_rss_bytes": rss,
        "rss_per_agent_bytes": rss / agents,
    }


def _run(args: tuple[str, int, str]) -> dict[str, Any]:
    part, agents, algorithm = args
    return core_run(agents, algorithm) if part == "core" else inprocess_run(agents, algorithm)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--core", type=int, nargs="*", default=[100, 1000, 10000])
    ap.add_argument("--inprocess", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--algorithms", nargs="+", default=["fedmd", "kt-pfl"])
    ap.add_argument("--out", type=Path, default=RESULTS / "sim_scale.json")
    args = ap.parse_args(argv)
    jobs = [("core", n, a) for a in args.algorithms for n in args.core]
    jobs += [("inprocess", n, a) for a in args.algorithms for n in args.inprocess]
    results = []
    ctx = multiprocessing.get_context("spawn")
    for job in jobs:
        with ctx.Pool(1) as pool:  # a fresh process per run: its peak memory is its own
            entry = pool.apply(_run, (job,))
        results.append(entry)
        print(json.dumps({k: v for k, v in entry.items() if not isinstance(v, list)}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python -m benchmarks.sim_scale", *(argv or sys.argv[1:])])
        args.out.write_text(json.dumps({"command": command, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MQTT vs gRPC on loopback: throughput of a 10 MB tensor and round latency of 8 agents.

The coordinator's transport runs in a child process with an echo-like Inbound; agents
run in this process. MQTT goes through a real mosquitto (started here in a temporary
directory unless --broker names one). For each transport:

- throughput: an agent sends a Result holding one float32 tensor of --size-mb MB (its
  data in a blob, chunked) and waits for the coordinator's acknowledgement; the median
  of --repeats transfers after a warm-up, in MB/s; also the wire bytes per payload byte
  (the agent's ByteMeter: frames plus gRPC prefixes or MQTT PUBLISH headers and PUBACKs);
- round latency: --agents agents each send a Result of --round-kb kB (soft predictions)
  and the coordinator echoes it back; a round lasts from the first send to the last
  reply; median and 90th percentile of --rounds rounds.

Writes benchmarks/results/transport.json.

    python benchmarks/transport_throughput.py [--repeats 5] [--rounds 20] [--broker mqtt://HOST:PORT]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import paho.mqtt

from pfl_edge import codec
from pfl_edge.accounting import ByteMeter
from pfl_edge.broker import Broker
from pfl_edge.framing import Message
from pfl_edge.transport.base import ClientTransport, Identity, ServerTransport
from pfl_edge.transport.credentials import TransportOptions
from pfl_edge.transport.factory import client_for, server_for
from pfl_edge.transport.grpc_server import GrpcServerTransport
from pfl_edge.v1 import messages_pb2 as pb

RESULTS = Path(__file__).parent / "results" / "transport.json"
MB = 1_000_000
RUN_ID = "bench"
TIMEOUT_S = 120.0
UPLOAD, ECHO = "upload", "echo"
GRPC_ANY_PORT = "grpc://127.0.0.1:0"


class EchoInbound:
    """Register -> RunConfig; an "upload" Result -> a small acknowledgement; an "echo"
    Result -> a Task with the same tensors and blobs."""

    def on_message(
        self, peer: str | None, msg: Message, identity: Identity | None = None
    ) -> Future[list[Message]]:
        env = msg.envelope
        reply = Message(pb.Envelope(agent_id=env.agent_id, run_id=RUN_ID, round=env.round))
        if env.HasField("register"):
            reply.envelope.run_config.algorithm = "echo"
        elif env.result.action == ECHO:
            reply.envelope.task.action = ECHO
            reply.envelope.task.tensors.extend(env.result.tensors)
            reply.blobs = msg.blobs
        else:
            reply.envelope.metrics.SetInParent()
        fut: Future[list[Message]] = Future()
        fut.set_result([reply])
        return fut

    def on_disconnect(self, agent_id: str, reason: str) -> None:
        pass


def _serve(url: str, max_message_bytes: int, ready: Any, stop: Any) -> None:
    server: ServerTransport
    if url == GRPC_ANY_PORT:  # the factory reads port 0 as "default port"
        server = GrpcServerTransport(
            "127.0.0.1:0", ByteMeter(), max_message_bytes=max_message_bytes
        )
    else:
        options = TransportOptions(max_message_bytes=max_message_bytes)
        server = server_for(url, ByteMeter(), run_id=RUN_ID, options=options)
    server.start(EchoInbound())
    ready.put(server.address)
    stop.wait()
    server.stop()


class Coordinator:
    """The server transport in a child process (its own interpreter and GIL)."""

    def __init__(self, url: str, max_message_bytes: int) -> None:
        ctx = mp.get_context("spawn")
        ready, self._stop = ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(
            target=_serve, args=(url, max_message_bytes, ready, self._stop), daemon=True
        )
        self._proc.start()
        self.address: str = ready.get(timeout=60)

    def close(self) -> None:
        self._stop.set()
        self._proc.join(10)


def connect_agents(address: str, count: int) -> list[tuple[ClientTransport, ByteMeter]]:
    agents = []
    for i in range(count):
        meter = ByteMeter()
        client = client_for(address, meter, agent_id=f"agent-{i}", run_id=RUN_ID)
        client.connect(30)
        client.send(
            Message(pb.Envelope(agent_id=f"agent-{i}", run_id=RUN_ID, register=pb.Register()))
        )
        reply(client)
        agents.append((client, meter))
    return agents


def reply(client: ClientTransport) -> Message:
    msg = client.recv(TIMEOUT_S)
    if msg is None:
        raise RuntimeError(f"no reply within {TIMEOUT_S:.0f} s")
    return msg


def result(agent_id: str, round_: int, action: str, array: np.ndarray) -> Message:
    blobs: codec.Blobs = []
    tensors = [codec.encode("x", array, blobs=blobs)]
    return Message(
        pb.Envelope(
            agent_id=agent_id,
            run_id=RUN_ID,
            round=round_,
            result=pb.Result(action=action, tensors=tensors),
        ),
        blobs,
    )


def throughput(address: str, size_mb: float, repeats: int) -> dict[str, float]:
    ((client, meter),) = connect_agents(address, 1)
    array = np.random.default_rng(0).standard_normal(int(size_mb * MB) // 4).astype(np.float32)
    times, wire = [], 0
    try:
        for i in range(repeats + 1):  # the first is a warm-up
            before = meter.total(direction="up")
            start = time.perf_counter()
            client.send(result("agent-0", i + 1, UPLOAD, array))
            reply(client)
            if i:
                times.append(time.perf_counter() - start)
            wire = meter.total(direction="up") - before
    finally:
        client.close()
    median = statistics.median(times)
    return {
        "size_mb": size_mb,
        "median_s": median,
        "mb_s": size_mb / median,
        "min_s": min(times),
        "max_s": max(times),
        "wire_bytes_per_payload_byte": wire / array.nbytes,
    }


def round_latency(address: str, agents: int, round_kb: float, rounds: int) -> dict[str, float]:
    fleet = connect_agents(address, agents)
    soft = np.random.default_rng(1).random(int(round_kb * 1000) // 4, dtype=np.float32)
    times = []
    try:
        for r in range(rounds + 1):  # the first is a warm-up
            messages = [result(f"agent-{i}", r + 1, ECHO, soft) for i in range(agents)]
            start = time.perf_counter()
            for (client, _), msg in zip(fleet, messages, strict=True):
                client.send(msg)
            for client, _ in fleet:
                reply(client)
            if r:
                times.append(time.perf_counter() - start)
    finally:
        for client, _ in fleet:
            client.close()
    up = sum(meter.total(direction="up", kinds=["result"]) for _, meter in fleet)
    ordered = sorted(times)
    return {
        "agents": agents,
        "payload_kb_each_way": round_kb,
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * ordered[int(0.9 * (len(ordered) - 1))],
        "min_ms": 1000 * ordered[0],
        "max_ms": 1000 * ordered[-1],
        "wire_bytes_per_payload_byte": up / (soft.nbytes * agents * (rounds + 1)),
    }


def measure(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    coordinator = Coordinator(url, max_message_bytes=int(4 * args.size_mb * MB))
    try:
        print(f"{name}: coordinator at {coordinator.address}", flush=True)
        tp = throughput(coordinator.address, args.size_mb, args.repeats)
        print(
            f"  {args.size_mb:g} MB tensor: {tp['mb_s']:.0f} MB/s (median of {args.repeats}), "
            f"{tp['wire_bytes_per_payload_byte']:.4f} wire bytes per payload byte",
            flush=True,
        )
        rl = round_latency(coordinator.address, args.agents, args.round_kb, args.rounds)
        print(
            f"  round of {args.agents} agents, {args.round_kb:g} kB each way: median "
            f"{rl['median_ms']:.1f} ms, p90 {rl['p90_ms']:.1f} ms",
            flush=True,
        )
    finally:
        coordinator.close()
    return {"throughput": tp, "round_latency": rl}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=float, default=10.0, help="tensor size (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="timed transfers (default 5)")
    parser.add_argument("--agents", type=int, default=8, help="agents in a round (default 8)")
    parser.add_argument(
        "--round-kb",
        type=float,
        default=40.0,
        help="per-agent payload each way (default 40: 1000 x 10 float32)",
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument(
        "--broker",
        help="mqtt://HOST:PORT of a running broker "
        "(default: start mosquitto in a temporary directory)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    results: dict[str, Any] = {}
    results["grpc"] = measure("gRPC", GRPC_ANY_PORT, args)
    if args.broker:
        results["mqtt"] = measure(f"MQTT via {args.broker}", args.broker, args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            broker = Broker(Path(tmp)).start()
            try:
                results["mqtt"] = measure(
                    f"MQTT via local mosquitto {broker.url}", broker.url, args
                )
            finally:
                broker.stop()
    out = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "paho_mqtt": paho.mqtt.__version__,
            "broker": args.broker or "mosquitto (local, loopback)",
        },
        "note": "coordinator transport in a child process, agents in the benchmark process; "
        "MQTT carries each frame twice (agent to broker, broker to coordinator)",
        **results,
        "mqtt_over_grpc": {
            "throughput": results["mqtt"]["throughput"]["mb_s"]
            / results["grpc"]["throughput"]["mb_s"],
            "round_latency": results["mqtt"]["round_latency"]["median_ms"]
            / results["grpc"]["round_latency"]["median_ms"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

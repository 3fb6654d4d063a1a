"""Idle traffic per agent: what a connected agent costs when no round is running.

Agents keep one long-lived gRPC stream on which the coordinator pushes work, so an idle
link carries keepalive pings only. Beside it, in the same run, a polling client of the
kind other frameworks use (a request every few seconds) shows what polling costs. Both
go through a counting TCP proxy. Writes benchmarks/results/idle.json.

    python benchmarks/idle_traffic.py [--agents 4] [--seconds 150] [--poll-interval 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.config import PublicSection, RunConfig, RunSection, ServerSection
from coordinator.service import start
from pfl_edge.accounting import ByteMeter
from pfl_edge.constants import KEEPALIVE_SECONDS
from pfl_edge.framing import Message
from pfl_edge.netproxy import CountingProxy
from pfl_edge.transport.grpc_client import GrpcClientTransport
from pfl_edge.v1 import messages_pb2 as pb

RESULTS = Path(__file__).parent / "results" / "idle.json"


def registered_agent(target: str, agent_id: str) -> GrpcClientTransport:
    t = GrpcClientTransport(target, ByteMeter())
    t.connect(10)
    t.send(
        Message(
            pb.Envelope(
                agent_id=agent_id,
                register=pb.Register(
                    model=pb.ModelInfo(
                        architecture="idle",
                        parameter_count=1,
                        input_shape=[1, 4, 4],
                        num_classes=10,
                    ),
                    num_train_samples=1,
                ),
            )
        )
    )
    reply = t.recv(10)
    if reply is None or not reply.envelope.HasField("run_config"):
        raise RuntimeError(f"{agent_id} was not registered: {reply}")
    return t


def poller(target: str, interval: float, stop: threading.Event) -> None:
    """A polling design: ask the server for work every `interval` seconds."""
    channel = grpc.insecure_channel(target)
    stub = health_pb2_grpc.HealthStub(channel)
    while not stop.is_set():
        stub.Check(health_pb2.HealthCheckRequest(service=""))
        stop.wait(interval)
    channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--poll-interval", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        import numpy as np

        public = Path(tmp) / "public.npz"
        np.savez(public, x=np.zeros((10, 1, 4, 4), np.uint8))
        cfg = RunConfig(
            run=RunSection(id="idle", min_agents=args.agents + 1, state_dir=f"{tmp}/state"),
            public=PublicSection(dataset=str(public), samples=10, per_round=5),
            server=ServerSection(grpc="127.0.0.1:0"),
        )
        running = start(cfg)
        port = int(running.transport("grpc").address.rsplit(":", 1)[1])
        push_proxy = CountingProxy(("127.0.0.1", port)).start()
        poll_proxy = CountingProxy(("127.0.0.1", port)).start()
        agents = [
            registered_agent(f"127.0.0.1:{push_proxy.port}", f"idle-{i}")
            for i in range(args.agents)
        ]
        stop = threading.Event()
        polling = threading.Thread(
            target=poller, args=(f"127.0.0.1:{poll_proxy.port}", args.poll_interval, stop)
        )
        polling.start()
        time.sleep(2)  # connection set-up is not idle traffic
        push_proxy.reset()
        poll_proxy.reset()
        start_t = time.time()
        while (elapsed := time.time() - start_t) < args.seconds:
            time.sleep(min(15.0, args.seconds - elapsed))
            print(
                f"  {elapsed:5.0f} s: push {push_proxy.counts().up + push_proxy.counts().down}"
                f" bytes from {args.agents} agents, polling client "
                f"{poll_proxy.counts().up + poll_proxy.counts().down} bytes",
                flush=True,
            )
        minutes = (time.time() - start_t) / 60
        push, poll = push_proxy.counts(), poll_proxy.counts()
        stop.set()
        polling.join()
        for a in agents:
            a.close()
        push_proxy.stop()
        poll_proxy.stop()
        running.stop()

    result = {
        "command": "python benchmarks/idle_traffic.py " + " ".join(sys.argv[1:]),
        "seconds": minutes * 60,
        "keepalive_seconds": KEEPALIVE_SECONDS,
        "agents": args.agents,
        "push_bytes_per_agent_per_minute": (push.up + push.down) / args.agents / minutes,
        "polling_bytes_per_client_per_minute": (poll.up + poll.down) / minutes,
        "poll_interval_seconds": args.poll_interval,
        "target_bytes_per_agent_per_minute": 1000,
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

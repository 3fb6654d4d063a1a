"""Idle traffic per agent: what a connected agent costs when no round is running.

Agents keep one long-lived gRPC stream on which the coordinator pushes work, so an idle
link carries keepalive pings only. Beside it, in the same run, a polling client of the
kind other frameworks use (a request every few seconds) shows what polling costs. Every
client has its own TCP connection through a counting TCP proxy. Writes
benchmarks/results/idle.json.

    python benchmarks/idle_traffic.py [--agents 4] [--seconds 180] [--poll-interval 3]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.config import PublicSection, RunConfig, RunSection, ServerSection
from coordinator.service import start
from pfl_edge.accounting import ByteMeter
from pfl_edge.constants import KEEPALIVE_SECONDS
from pfl_edge.framing import Message
from pfl_edge.netproxy import CountingProxy
from pfl_edge.transport.credentials import TlsFiles
from pfl_edge.transport.grpc_client import GrpcClientTransport
from pfl_edge.v1 import messages_pb2 as pb

RESULTS = Path(__file__).parent / "results" / "idle.json"


def registered_agent(
    target: str, agent_id: str, tls: TlsFiles | None = None
) -> GrpcClientTransport:
    t = GrpcClientTransport(target, ByteMeter(), tls=tls)
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


def agent_tls(fleet: Path, agent_id: str) -> TlsFiles:
    """An agent's mutual TLS files in a fleet directory of pfl_edge.certs."""
    folder = fleet / "agents" / agent_id
    return TlsFiles(str(folder / "ca.crt"), str(folder / "agent.crt"), str(folder / "agent.key"))


@contextlib.contextmanager
def idle_fleet(agents: int, fleet: Path | None = None) -> Iterator[tuple[int, list[CountingProxy]]]:
    """A coordinator on loopback and `agents` registered agents idle-0.. whose streams go
    through a counting proxy each; yields (the coordinator's port, the proxies). With
    `fleet` (a fleet directory of pfl_edge.certs where idle-0.. are members): mutual TLS
    and the fleet registry; else plaintext.

    A proxy each, so that every agent has its own TCP connection, as agents on their own
    devices have: channels of one process to one address share a connection (and its
    keepalive pings) where their credentials are the same."""
    with tempfile.TemporaryDirectory() as tmp:
        public = Path(tmp) / "public.npz"
        np.savez(public, x=np.zeros((10, 1, 4, 4), np.uint8))
        server = ServerSection(grpc="127.0.0.1:0")
        if fleet is not None:
            server = dataclasses.replace(
                server,
                grpc_tls_cert=str(fleet / "coordinator.crt"),
                grpc_tls_key=str(fleet / "coordinator.key"),
                grpc_tls_client_ca=str(fleet / "ca.crt"),
                fleet=str(fleet / "fleet.toml"),
            )
        cfg = RunConfig(
            run=RunSection(id="idle", min_agents=agents + 1, state_dir=f"{tmp}/state"),
            public=PublicSection(dataset=str(public), samples=10, per_round=5),
            server=server,
        )
        running = start(cfg)
        port = int(running.transport("grpc").address.rsplit(":", 1)[1])
        proxies = [CountingProxy(("127.0.0.1", port)).start() for _ in range(agents)]
        clients = [
            registered_agent(
                f"127.0.0.1:{proxy.port}",
                f"idle-{i}",
                None if fleet is None else agent_tls(fleet, f"idle-{i}"),
            )
            for i, proxy in enumerate(proxies)
        ]
        try:
            yield port, proxies
        finally:
            for c in clients:
                c.close()
            for proxy in proxies:
                proxy.stop()
            running.stop()


@contextlib.contextmanager
def polling(port: int, interval: float) -> Iterator[CountingProxy]:
    """A polling client (`poller`) of the coordinator on `port`, through a counting proxy."""
    proxy = CountingProxy(("127.0.0.1", port)).start()
    stop = threading.Event()
    thread = threading.Thread(target=poller, args=(f"127.0.0.1:{proxy.port}", interval, stop))
    thread.start()
    try:
        yield proxy
    finally:
        stop.set()
        thread.join()
        proxy.stop()


def _bytes(proxies: list[CountingProxy]) -> int:
    return sum(c.up + c.down for c in (p.counts() for p in proxies))


def watch(links: dict[str, list[CountingProxy]], seconds: float) -> tuple[dict[str, float], float]:
    """Bytes per client (proxy) per minute through each named group of proxies over
    `seconds`, counted from 2 s after the call (connection set-up is not idle traffic);
    and the seconds counted. Progress on stderr every 15 s."""
    time.sleep(2)
    for proxies in links.values():
        for proxy in proxies:
            proxy.reset()
    start_t = time.time()
    while (elapsed := time.time() - start_t) < seconds:
        time.sleep(min(15.0, seconds - elapsed))
        print(
            f"  {time.time() - start_t:5.0f} s: "
            + ", ".join(
                f"{name} {_bytes(proxies)} bytes from {len(proxies)}"
                for name, proxies in links.items()
            ),
            file=sys.stderr,
            flush=True,
        )
    minutes = (time.time() - start_t) / 60
    rates = {name: _bytes(proxies) / len(proxies) / minutes for name, proxies in links.items()}
    return rates, minutes * 60


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument(
        "--seconds",
        type=float,
        default=3 * KEEPALIVE_SECONDS,
        help="idle traffic counted this long (default: 3 keepalive periods)",
    )
    parser.add_argument("--poll-interval", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with (
        idle_fleet(args.agents) as (port, push),
        polling(port, args.poll_interval) as poll,
    ):
        rates, seconds = watch({"push": push, "polling": [poll]}, args.seconds)
    result = {
        "command": "python benchmarks/idle_traffic.py " + " ".join(sys.argv[1:]),
        "seconds": seconds,
        "keepalive_seconds": KEEPALIVE_SECONDS,
        "agents": args.agents,
        "push_bytes_per_agent_per_minute": rates["push"],
        "polling_bytes_per_client_per_minute": rates["polling"],
        "poll_interval_seconds": args.poll_interval,
        "target_bytes_per_agent_per_minute": 1000,
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

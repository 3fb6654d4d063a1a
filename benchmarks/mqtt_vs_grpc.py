"""The same seeded demo over gRPC and over MQTT: final accuracy and payload bytes.

Runs `pfl-edge demo` twice with identical arguments (kt-pfl, or fedmd where kt-pfl is
not available), once with --transport grpc and once with --transport mqtt (a mosquitto
the demo starts, unless --broker names one), and compares their report.json:

- final mean test accuracy (points: percentage points);
- payload bytes per agent-round, up and down (the coordinator's accounting: frames plus
  gRPC message prefixes or MQTT PUBLISH headers and PUBACKs), and each agent's own totals
  (the one-off public-set download included);
- the counting proxy's socket bytes, which add connection traffic (HTTP/2 or MQTT
  control packets) to the above.

Issue targets: accuracy within 1 point, per-agent payload bytes within 5%. Writes
benchmarks/results/mqtt_vs_grpc.json.

    python benchmarks/mqtt_vs_grpc.py [--agents 4] [--rounds 3] [--broker mqtt://HOST:PORT]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from coordinator import strategies
from edge_agent import learners

RESULTS = Path(__file__).parent / "results" / "mqtt_vs_grpc.json"
ACCURACY_POINTS = 1.0
BYTES_SHARE = 0.05


def algorithm() -> str:
    """kt-pfl where both of its halves are installed, else fedmd."""
    if "kt-pfl" in strategies.available() and "kt-pfl" in learners.available():
        return "kt-pfl"
    return "fedmd"


def demo(transport: str, algo: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo over one transport; its report and wall time."""
    cmd = [
        sys.executable,
        "-m",
        "pfl_edge.cli",
        "demo",
        "--transport",
        transport,
        "--algorithm",
        algo,
        "--agents",
        str(args.agents),
        "--rounds",
        str(args.rounds),
        "--samples-per-agent",
        str(args.samples_per_agent),
        "--local-epochs",
        str(args.local_epochs),
        "--public-samples",
        str(args.public_samples),
        "--public-per-round",
        str(args.public_per_round),
        "--seed",
        str(args.seed),
        "--out",
        str(out),
    ]
    if transport == "mqtt" and args.broker:
        cmd += ["--broker", args.broker]
    print(f"{transport}: {' '.join(cmd[2:])}", flush=True)
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{transport} demo failed:\n{proc.stderr[-4000:]}")
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return {"report": report, "wall_s": wall}


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """What the comparison uses from one report."""
    report = run["report"]
    final = report["final"]
    return {
        "transport": report["transport"],
        "wall_s": run["wall_s"],
        "final_mean_test_acc": final["mean_test_acc"],
        "mean_test_acc_per_round": [r["mean_test_acc"] for r in report["rounds"]],
        "bytes_up_per_agent_round": final["bytes_up_per_agent_round"],
        "bytes_down_per_agent_round": final["bytes_down_per_agent_round"],
        "per_agent": {
            a["id"]: {
                "final_test_acc": a["final_test_acc"],
                "bytes_up": a["bytes_up"],
                "bytes_down": a["bytes_down"],
            }
            for a in report["agents"]
        },
        "socket_bytes_up": final["socket_bytes_up"],
        "socket_bytes_down": final["socket_bytes_down"],
        "wire_overhead": final["wire_overhead"],
    }


def compare(grpc: dict[str, Any], mqtt: dict[str, Any]) -> dict[str, Any]:
    """MQTT minus gRPC: accuracy in points, bytes as a share of gRPC's."""

    def share(a: float, b: float) -> float:
        return (b - a) / a

    points = 100 * (mqtt["final_mean_test_acc"] - grpc["final_mean_test_acc"])
    per_round = {
        d: share(grpc[f"bytes_{d}_per_agent_round"], mqtt[f"bytes_{d}_per_agent_round"])
        for d in ("up", "down")
    }
    per_agent = {
        agent: {
            d: share(grpc["per_agent"][agent][f"bytes_{d}"], mqtt["per_agent"][agent][f"bytes_{d}"])
            for d in ("up", "down")
        }
        for agent in grpc["per_agent"]
    }
    largest = max(abs(v) for shares in (per_round, *per_agent.values()) for v in shares.values())
    return {
        "final_mean_test_acc_points": points,
        "bytes_per_agent_round_share": per_round,
        "bytes_per_agent_share": per_agent,
        "largest_bytes_share": largest,
        "accuracy_within_1_point": abs(points) <= ACCURACY_POINTS,
        "bytes_within_5_percent": largest <= BYTES_SHARE,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples-per-agent", type=int, default=300)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--public-samples", type=int, default=1000)
    parser.add_argument("--public-per-round", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--broker", help="mqtt://HOST:PORT (default: the demo starts mosquitto)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    algo = algorithm()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for transport in ("grpc", "mqtt"):
            runs[transport] = summary(demo(transport, algo, Path(tmp) / transport, args))
            r = runs[transport]
            print(
                f"  final mean accuracy {r['final_mean_test_acc']:.4f}, per agent-round "
                f"up {r['bytes_up_per_agent_round']:.0f} B, "
                f"down {r['bytes_down_per_agent_round']:.0f} B, {r['wall_s']:.0f} s",
                flush=True,
            )
    diff = compare(runs["grpc"], runs["mqtt"])
    print(
        f"MQTT - gRPC: accuracy {diff['final_mean_test_acc_points']:+.2f} points, "
        f"largest payload difference {100 * diff['largest_bytes_share']:.2f}%",
        flush=True,
    )
    out = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "broker": args.broker or "mosquitto started by the demo (loopback)",
        },
        "algorithm": algo,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "broker")},
        **runs,
        "mqtt_minus_grpc": diff,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A run's report: report.json for machines, report.png for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.store import Store
from pfl_edge import peer_exchange
from pfl_edge.accounting import ByteMeter

FLOAT32_BYTES = 4

ORCHESTRATION = (
    "share of the rounds' wall time beyond the busiest agent's compute in each phase: "
    "the coordinator's own work, the transfers and the gaps between phases "
    "(1 - sum over phases of max over agents of compute / wall)"
)


def build(
    store: Store, meter: ByteMeter, *, algorithm: str, setup_tensor_bytes: int = 0
) -> dict[str, Any]:
    """Assemble the report from the persisted run state and the byte meter.

    `bytes_up`/`bytes_down` (per agent, per round) are all the agents put on and took off
    the wire: their traffic with the coordinator as its meter counts it, plus what they
    exchanged with each other directly and reported (also given apart as `peer_bytes_*`).
    """
    rounds = [r.metrics for r in store.rounds()]
    agents_db = store.agents()
    finals = store.finals()
    per_agent_rounds = store.agent_rounds()
    agents = []
    for agent_id, (info, transport) in sorted(agents_db.items()):
        final = finals.get(agent_id, {})
        history = per_agent_rounds.get(agent_id, {})
        # What the agent exchanged with other agents directly, as it reported per round.
        peer_up = int(sum(m.get(peer_exchange.BYTES_UP, 0.0) for m in history.values()))
        peer_down = int(sum(m.get(peer_exchange.BYTES_DOWN, 0.0) for m in history.values()))
        agents.append(
            {
                "id": agent_id,
                "model": info["architecture"],
                "params": info["parameter_count"],
                "train_samples": info["num_train_samples"],
                "test_samples": info.get("num_test_samples"),
                "transport": transport,
                "final_test_acc": final.get("final_test_acc"),
                "onnx_max_abs_diff": final.get("onnx_max_abs_diff"),
                "test_acc_per_round": [history[r].get("test_acc") for r in sorted(history)],
                "last_round_metrics": history[max(history)] if history else {},
                "bytes_up": meter.total(agent_id=agent_id, direction="up") + peer_up,
                "bytes_down": meter.total(agent_id=agent_id, direction="down") + peer_down,
                "peer_bytes_up": peer_up,
                "peer_bytes_down": peer_down,
            }
        )
    agent_rounds = sum(r["participants"] for r in rounds) or 1
    up = sum(r["bytes_up"] for r in rounds)
    down = sum(r["bytes_down"] for r in rounds)
    wall = sum(r["wall_s"] for r in rounds)
    tensor_round_bytes = sum(r["tensor_bytes_up"] + r["tensor_bytes_down"] for r in rounds)
    final_accs = [a["final_test_acc"] for a in agents if a["final_test_acc"] is not None]
    transports = sorted({a["transport"] for a in agents})
    report: dict[str, Any] = {
        "algorithm": algorithm,
        "transport": "+".join(transports),
        "agents": agents,
        "rounds": [
            {
                k: r.get(k)
                for k in (
                    "round",
                    "participants",
                    "mean_test_acc",
                    "mean_test_acc_before_distill",
                    "bytes_up",
                    "bytes_down",
                    "peer_bytes_up",
                    "peer_bytes_down",
                    "tensor_bytes_up",
                    "tensor_bytes_down",
                    "wall_s",
                    "critical_s",
                    "orchestration_s",
                    "coordinator_cpu_s",
                    "strategy",
                )
            }
            for r in rounds
        ],
        "final": {
            "mean_test_acc": float(np.mean(final_accs)) if final_accs else None,
            "bytes_up_per_agent_round": up / agent_rounds,
            "bytes_down_per_agent_round": down / agent_rounds,
            "param_bytes_per_agent": float(np.mean([a["params"] for a in agents])) * FLOAT32_BYTES
            if agents
            else None,
            "orchestration_share": sum(r["orchestration_s"] for r in rounds) / wall
            if wall
            else None,
            "orchestration_share_is": ORCHESTRATION,
            "setup_bytes_down": meter.total(round_=0, direction="down"),
            "setup_bytes_up": meter.total(round_=0, direction="up"),
            "accounted_bytes": meter.total()
            + sum(a["peer_bytes_up"] + a["peer_bytes_down"] for a in agents),
            "tensor_bytes": tensor_round_bytes + setup_tensor_bytes,
            "round_accounted_overhead": (up + down) / tensor_round_bytes
            if tensor_round_bytes
            else None,
        },
    }
    return report


def write(report: dict[str, Any], out_dir: Path) -> Path:
    """Write report.json and report.png into out_dir; returns the json path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    plot(report, out_dir / "report.png")
    return path


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in report["rounds"]]
    fig, (ax_acc, ax_bytes) = plt.subplots(1, 2, figsize=(11, 4))
    acc = [r["mean_test_acc"] for r in report["rounds"]]
    ax_acc.plot(rounds, acc, "o-", label="end of round")
    before = [r["mean_test_acc_before_distill"] for r in report["rounds"]]
    if any(b is not None for b in before):
        ax_acc.plot(rounds, before, "s--", label="before distillation")
    ax_acc.set(
        xlabel="round", ylabel="mean test accuracy", title=f"{report['algorithm']}: accuracy"
    )
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    ax_acc.set_xticks(rounds)
    n = [max(1, r["participants"]) for r in report["rounds"]]
    width = 0.4
    ax_bytes.bar(
        [x - width / 2 for x in rounds],
        [r["bytes_up"] / k / 1e3 for r, k in zip(report["rounds"], n, strict=True)],
        width,
        label="up",
    )
    ax_bytes.bar(
        [x + width / 2 for x in rounds],
        [r["bytes_down"] / k / 1e3 for r, k in zip(report["rounds"], n, strict=True)],
        width,
        label="down",
    )
    param_kb = (report["final"]["param_bytes_per_agent"] or 0) / 1e3
    ax_bytes.axhline(param_kb, color="gray", ls=":", label=f"FedAvg params ({param_kb:.0f} KB)")
    ax_bytes.set(
        xlabel="round",
        ylabel="KB per agent",
        title=f"bytes on the wire ({report['transport']})",
        yscale="log",
    )
    ax_bytes.set_xticks(rounds)
    ax_bytes.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict[str, Any], out: Path) -> str:
    """The report for people: one line per agent, then the run's figures."""
    f = report["final"]
    lines = [f"{'agent':10s} {'model':18s} {'params':>8s} {'acc':>7s} {'onnx diff':>10s}"]
    for a in report["agents"]:
        acc = a["final_test_acc"]
        diff = a["onnx_max_abs_diff"]
        lines.append(
            f"{a['id']:10s} {a['model']:18s} {a['params']:8d} "
            f"{'-' if acc is None else f'{acc:.4f}':>7s} "
            f"{'-' if diff is None else f'{diff:.1e}':>10s}"
        )
    accs = " -> ".join(
        f"{r['mean_test_acc']:.3f}" for r in report["rounds"] if r["mean_test_acc"] is not None
    )
    lines += [
        f"mean test accuracy per round: {accs}",
        f"uplink per agent-round {f['bytes_up_per_agent_round'] / 1e3:.1f} KB, downlink "
        f"{f['bytes_down_per_agent_round'] / 1e3:.1f} KB; FedAvg would send "
        f"{f['param_bytes_per_agent'] / 1e3:.1f} KB of parameters each way",
        f"orchestration share {f['orchestration_share']:.1%}"
        + (
            f", wire overhead {f['wire_overhead']:.3f} (socket bytes / tensor bytes)"
            if f.get("wire_overhead") is not None
            else ""
        ),
        f"report: {out / 'report.json'}, plot: {out / 'report.png'}",
    ]
    heatmaps = sorted(out.glob("*_heatmap.png"))
    if heatmaps:
        lines.append(
            f"strategy matrices: {', '.join(map(str, heatmaps))} (per round: {out / 'inspect'})"
        )
    return "\n".join(lines)

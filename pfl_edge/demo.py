"""`pfl-edge demo`: a whole run on one machine, every party its own OS process.

The agents reach the coordinator (gRPC) or the broker (MQTT) through a counting TCP
proxy, so the report can set the socket-level byte count beside the coordinator's own
accounting. Over MQTT the proxy carries the agents' side of the broker only: their
PUBLISH and PUBACK packets, which the accounting counts, plus the connection traffic it
leaves out (CONNECT, SUBSCRIBE, PINGREQ, status and presence messages), as the gRPC proxy
sees HTTP/2 setup and pings. The coordinator's own link to the broker carries the same
frames a second time and is not measured. Without --broker the demo starts a mosquitto
of its own (pfl_edge.broker).
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pfl_edge.broker import Broker
from pfl_edge.netproxy import CountingProxy, SocketCounts, free_port
from pfl_edge.transport.factory import Endpoint, parse

log = logging.getLogger("pfl_edge.demo")

LOG_TAIL_LINES = 15


def run_demo(args: argparse.Namespace) -> int:
    from pfl_edge.cli import write_partitions

    if args.broker is not None and args.transport != "mqtt":
        raise ValueError("--broker needs --transport mqtt")
    if args.broker is not None and parse(args.broker).scheme != "mqtt":
        raise ValueError(f"--broker {args.broker}: write mqtt://HOST:PORT")

    out: Path = args.out
    state = out / "state"
    for old in (state, out / "agents", out / "broker", out / "inspect"):
        if old.exists():
            log.info("removing the previous demo's %s", old)
            shutil.rmtree(old)
    for old_heatmap in out.glob("*_heatmap.png"):
        old_heatmap.unlink()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log.info(
        "partitioning MNIST for %d agents (%s, %d samples each)",
        args.agents,
        args.noniid,
        args.samples_per_agent,
    )
    paths = write_partitions(args, out / "data")
    run_id = "demo"
    broker: Broker | None = None
    if args.transport == "grpc":
        server = Endpoint("grpc", "127.0.0.1", free_port())
    elif args.broker is None:
        broker = Broker(out / "broker")  # started below
        server = parse(broker.url)
    else:
        server = parse(args.broker)
        # A run id of its own: sessions an earlier demo left on the broker stay apart.
        run_id = f"demo-{secrets.token_hex(4)}"
    config = out / "coordinator.toml"
    config.write_text(_config_toml(args, run_id, server, state))
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    proxy: CountingProxy | None = None
    try:
        if broker is not None:
            broker.start()
            log.info(
                "no --broker given: started mosquitto on %s (config and log in %s)",
                server,
                broker.workdir,
            )
        proxy = CountingProxy((server.host, server.port)).start()
        agent_url = f"{server.scheme}://127.0.0.1:{proxy.port}"
        log.info(
            "coordinator on %s (run %s), agents connect through a counting proxy: %s",
            server,
            run_id,
            agent_url,
        )
        coord_log = out / "logs" / "coordinator.log"
        coordinator = _spawn(
            [
                sys.executable,
                "-m",
                "coordinator.cli",
                "serve",
                "--config",
                str(config),
                "--report-dir",
                str(out),
            ],
            coord_log,
            echo=True,
        )
        procs.append(("coordinator", coordinator, coord_log))
        models = [m for m in args.models.split(",") if m]
        for i, path in enumerate(paths):
            agent_id = f"agent-{i:02d}"
            agent_log = out / "logs" / f"{agent_id}.log"
            cmd = agent_command(
                agent_url,
                agent_id,
                models[i % len(models)],
                path,
                out / "agents" / agent_id,
                "--run-id",
                run_id,
                "--seed",
                str(args.seed),
            )
            procs.append((agent_id, _spawn(cmd, agent_log), agent_log))
        rc = _wait(procs, args.timeout)
        counts = proxy.counts()
    finally:
        for _, p, _ in procs:
            if p.poll() is None:
                p.kill()
        if proxy is not None:
            proxy.stop()
        if broker is not None:
            broker.stop()
    if rc != 0:
        return rc
    report_path = out / "report.json"
    report = json.loads(report_path.read_text())
    _add_socket_counts(report, counts)
    report_path.write_text(json.dumps(report, indent=2))
    _summary(report, out)
    return 0


def _config_toml(args: argparse.Namespace, run_id: str, server: Endpoint, state: Path) -> str:
    listener = (
        f'grpc = ""\nmqtt = "{server}"'
        if server.scheme == "mqtt"
        else f'grpc = "{server.hostport}"'
    )
    return f"""[run]
id = "{run_id}"
algorithm = "{args.algorithm}"
rounds = {args.rounds}
min_agents = {args.agents}
seed = {args.seed}
state_dir = "{state}"

[public]
dataset = "mnist"
samples = {args.public_samples}
per_round = {args.public_per_round}

[server]
{listener}

[algorithm]
local_epochs = {args.local_epochs}
wire = "{args.wire}"
seed = {args.seed}
"""


def agent_command(
    coordinator: str, agent_id: str, model: str, data: Path, workdir: Path, *extra: str
) -> list[str]:
    """The `pfl-agent run` command of one agent on one thread, its outputs and cache
    under `workdir`; `extra` are further options."""
    return [
        sys.executable,
        "-m",
        "edge_agent.cli",
        "run",
        "--coordinator",
        coordinator,
        "--model",
        model,
        "--data",
        str(data),
        "--agent-id",
        agent_id,
        "--out",
        str(workdir),
        "--cache-dir",
        str(workdir / "cache"),
        "--threads",
        "1",
        *extra,
    ]


def _spawn(cmd: list[str], log_path: Path, echo: bool = False) -> subprocess.Popen[bytes]:
    """Start a process logging to `log_path`; with `echo` its lines also go to stderr
    (the coordinator's log is the demo's live progress)."""
    if not echo:
        with log_path.open("wb") as f:
            return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threading.Thread(target=_tee, args=(proc, log_path), daemon=True).start()
    return proc


def _tee(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    assert proc.stdout is not None
    with log_path.open("wb") as f:
        for line in proc.stdout:
            f.write(line)
            f.flush()
            sys.stderr.buffer.write(line)
            sys.stderr.flush()


def _wait(procs: list[tuple[str, subprocess.Popen[bytes], Path]], timeout: float) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        codes = {name: p.poll() for name, p, _ in procs}
        failed = [n for n, c in codes.items() if c not in (None, 0)]
        if failed:
            for name, _, path in procs:
                if name in failed:
                    tail = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                    log.error(
                        "%s failed (exit %s); last lines of %s:\n%s",
                        name,
                        codes[name],
                        path,
                        "\n".join(tail),
                    )
            return 1
        if all(c == 0 for c in codes.values()):
            return 0
        time.sleep(0.5)
    log.error("demo did not finish within %.0f s; logs are in %s", timeout, procs[0][2].parent)
    return 1


def _add_socket_counts(report: dict[str, Any], counts: SocketCounts) -> None:
    final = report["final"]
    final["socket_bytes_up"] = counts.up
    final["socket_bytes_down"] = counts.down
    tensor = final.get("tensor_bytes") or 0
    final["wire_overhead"] = (counts.up + counts.down) / tensor if tensor else None
    final["accounting_vs_socket"] = (
        final["accounted_bytes"] / (counts.up + counts.down) if counts.up + counts.down else None
    )


def _summary(report: dict[str, Any], out: Path) -> None:
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
        f"orchestration share {f['orchestration_share']:.1%}, wire overhead "
        f"{f['wire_overhead']:.3f} (socket bytes / tensor bytes)",
        f"report: {out / 'report.json'}, plot: {out / 'report.png'}",
    ]
    heatmaps = sorted(out.glob("*_heatmap.png"))
    if heatmaps:
        lines.append(
            f"strategy matrices: {', '.join(map(str, heatmaps))} (per round: {out / 'inspect'})"
        )
    print("\n".join(lines))

"""`pfl-edge demo`: a whole run on one machine, every party its own OS process.

The agents reach the coordinator (gRPC) or the broker (MQTT) through a counting TCP
proxy, so the report can set the socket-level byte count beside the coordinator's own
accounting. Over MQTT the proxy carries the agents' side of the broker only: their
PUBLISH and PUBACK packets, which the accounting counts, plus the connection traffic it
leaves out (CONNECT, SUBSCRIBE, PINGREQ, status and presence messages), as the gRPC proxy
sees HTTP/2 setup and pings. The coordinator's own link to the broker carries the same
frames a second time and is not measured. Without --broker the demo starts a mosquitto
of its own (pfl_edge.broker).

Every link runs over mutual TLS with a throwaway fleet (`pfl_edge.certs`: a CA, the
coordinator's and broker's certificates, one per agent, the registry, the broker's
accounts and ACL) in `<out>/pki`; the socket counts then include the TLS records and
handshakes. `--insecure` turns TLS off: gRPC is plaintext on loopback, the demo's broker
still wants the fleet's per-run passwords and keeps its ACL. `--broker` names a broker
the demo cannot provision, so it needs `--insecure` and connects as that broker allows.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.report import summary as report_summary
from pfl_edge import certs
from pfl_edge.broker import Broker, secure_config
from pfl_edge.data.partition import PartitionSpec, agent_ids, write_partitions
from pfl_edge.netproxy import CountingProxy, SocketCounts, free_port
from pfl_edge.transport.factory import Endpoint, parse

log = logging.getLogger("pfl_edge.demo")

LOG_TAIL_LINES = 15
DEMO_HOSTS = ("127.0.0.1", "localhost")
"""Names in the demo coordinator's and broker's certificates: everything is on loopback."""


@dataclass(frozen=True)
class Security:
    """How the demo's parties authenticate: mutual TLS with the fleet in `pki` (`tls`),
    or, with --insecure, the fleet's broker passwords only; `pki` None: none of it (an
    operator's broker, which the demo cannot provision)."""

    transport: str
    pki: Path | None
    tls: bool

    def describe(self) -> str:
        """The demo log's line on the mode it runs in."""
        if self.pki is None:
            return "--insecure with --broker: plaintext and anonymous, as that broker allows"
        if not self.tls and self.transport == "grpc":
            return (
                "--insecure: plaintext gRPC on loopback, no certificates (the fleet registry "
                f"in {self.pki} still limits who may join)"
            )
        if not self.tls:
            return (
                "--insecure: MQTT without TLS; the demo's broker still wants per-run passwords "
                f"and keeps the per-agent ACL ({self.pki / 'mosquitto'})"
            )
        if self.transport == "grpc":
            return (
                "mutual TLS on gRPC: the coordinator and every agent show a certificate of "
                f"the demo's throwaway fleet CA ({self.pki}); only the fleet's agents may join"
            )
        return (
            "mutual TLS to the broker: the coordinator and every agent log in with a "
            f"certificate of the demo's throwaway fleet CA ({self.pki}), whose name is the "
            "broker username and client id; per-agent ACL"
        )

    def server_keys(self) -> dict[str, str]:
        """The coordinator's [server] keys for this mode."""
        if self.pki is None:
            return {}
        keys = {"fleet": str(self.pki / "fleet.toml")}
        if self.transport == "grpc" and self.tls:
            keys["grpc_tls_cert"] = str(self.pki / "coordinator.crt")
            keys["grpc_tls_key"] = str(self.pki / "coordinator.key")
            keys["grpc_tls_client_ca"] = str(self.pki / "ca.crt")
        elif self.transport == "mqtt" and self.tls:
            keys["mqtt_tls_ca"] = str(self.pki / "ca.crt")
            keys["mqtt_tls_cert"] = str(self.pki / "coordinator.crt")
            keys["mqtt_tls_key"] = str(self.pki / "coordinator.key")
        elif self.transport == "mqtt":
            keys["mqtt_password_file"] = str(self.pki / "coordinator.mqtt-password")
        return keys

    def agent_options(self, agent_id: str) -> list[str]:
        """`pfl-agent run` options of one agent for this mode."""
        if self.pki is None:
            return []
        folder = self.pki / "agents" / agent_id
        if self.tls:
            return agent_tls_arguments(folder)
        if self.transport == "mqtt":
            return ["--mqtt-password-file", str(folder / "mqtt-password")]
        return []


def agent_tls_arguments(folder: Path) -> list[str]:
    """`pfl-agent run` options for the files of `pfl-edge certs add` in `folder`."""
    return [
        "--tls-ca",
        str(folder / "ca.crt"),
        "--tls-cert",
        str(folder / "agent.crt"),
        "--tls-key",
        str(folder / "agent.key"),
    ]


def run_demo(args: argparse.Namespace) -> int:
    if args.broker is not None and args.transport != "mqtt":
        raise ValueError("--broker needs --transport mqtt")
    if args.broker is not None and parse(args.broker).scheme != "mqtt":
        raise ValueError(f"--broker {args.broker}: write mqtt://HOST:PORT")
    if args.broker is not None and not args.insecure:
        raise ValueError(
            f"--broker {args.broker}: the demo cannot give your broker its certificates, "
            "accounts and ACL; add --insecure to connect to it without TLS and anonymously, "
            "or leave --broker out for a demo broker with mutual TLS"
        )

    out: Path = args.out
    state = out / "state"
    pki = out / "pki"
    for old in (state, out / "agents", out / "broker", out / "inspect", pki):
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
    paths = write_partitions(PartitionSpec.from_args(args), out / "data")
    ids = agent_ids(len(paths))
    security = Security(args.transport, None if args.broker else pki, not args.insecure)
    if security.pki is not None:
        _make_fleet(security.pki, ids)
    run_id = "demo"
    broker: Broker | None = None
    if args.transport == "grpc":
        server = Endpoint("grpc", "127.0.0.1", free_port())
    elif args.broker is None:
        port = free_port()
        conf = secure_config(out / "broker", port, pki, tls=security.tls)
        broker = Broker(out / "broker", conf, port)  # started below
        server = parse(broker.url)
    else:
        server = parse(args.broker)
        # A run id of its own: sessions an earlier demo left on the broker stay apart.
        run_id = f"demo-{secrets.token_hex(4)}"
    config = out / "coordinator.toml"
    config.write_text(_config_toml(args, run_id, server, state, security.server_keys()))
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
        log.info("security: %s", security.describe())
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
        for i, (agent_id, path) in enumerate(zip(ids, paths, strict=True)):
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
                *security.agent_options(agent_id),
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
    print(report_summary(report, out))
    return 0


def _make_fleet(pki: Path, agent_ids: list[str]) -> None:
    """A throwaway fleet for one demo run: CA, coordinator and broker certificates for
    loopback, and every agent registered (certificate, broker password, ACL lines)."""
    certs.init_fleet(pki, hosts=DEMO_HOSTS)
    for agent_id in agent_ids:
        certs.add_agent(pki, agent_id)


def _config_toml(
    args: argparse.Namespace,
    run_id: str,
    server: Endpoint,
    state: Path,
    security_keys: dict[str, str],
) -> str:
    listener = (
        f'grpc = ""\nmqtt = "{server}"'
        if server.scheme == "mqtt"
        else f'grpc = "{server.hostport}"'
    )
    # JSON strings are TOML basic strings: paths with quotes or backslashes stay intact.
    listener += "".join(f"\n{k} = {json.dumps(v)}" for k, v in security_keys.items())
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

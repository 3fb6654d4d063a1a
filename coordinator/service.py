"""Run a coordinator: transports, engine, persistence and the final report."""

from __future__ import annotations

import logging
import resource
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from coordinator import public, report, strategies
from coordinator.admission import Admission
from coordinator.config import ConfigError, RunConfig, ServerSection, split_hostport
from coordinator.engine import Engine
from coordinator.inspection import Board, InspectionWriter, InspectServer
from coordinator.store import Store
from coordinator.strategies.base import Strategy
from pfl_edge import params as run_params
from pfl_edge.accounting import ByteMeter
from pfl_edge.transport.base import ServerLimits, ServerTransport
from pfl_edge.transport.credentials import (
    Credentials,
    TlsFiles,
    TransportOptions,
    check_files,
    load_credentials,
)
from pfl_edge.transport.factory import server_for
from pfl_edge.values import Scalar

log = logging.getLogger("pfl_edge.coordinator")


def resolve_params(cfg: RunConfig) -> dict[str, Scalar]:
    strategy = strategies.get(cfg.run.algorithm)
    try:
        return run_params.resolve({**run_params.COMMON, **strategy.params}, cfg.algorithm)
    except ValueError as exc:
        raise ConfigError(f"[algorithm] {exc}") from None


def broker_login(server: ServerSection) -> Credentials:
    """The coordinator's MQTT broker login; ConfigError when a named file is unusable."""
    try:
        return load_credentials(
            username=server.mqtt_username or None,
            password_file=server.mqtt_password_file or None,
            tls_ca=server.mqtt_tls_ca or None,
            tls_cert=server.mqtt_tls_cert or None,
            tls_key=server.mqtt_tls_key or None,
        )
    except ValueError as exc:
        raise ConfigError(f"[server] {exc}") from None


def grpc_tls(server: ServerSection) -> TlsFiles | None:
    """The gRPC listener's TLS files (None: plaintext); ConfigError when one is missing."""
    if not server.grpc_tls_cert:
        return None
    tls = TlsFiles(server.grpc_tls_client_ca or None, server.grpc_tls_cert, server.grpc_tls_key)
    try:
        check_files(
            ("server.grpc_tls_cert", tls.certfile),
            ("server.grpc_tls_key", tls.keyfile),
            ("server.grpc_tls_client_ca", tls.ca_certs),
        )
    except ValueError as exc:
        raise ConfigError(f"[server] {exc}") from None
    return tls


def admission(server: ServerSection) -> Admission:
    """Who may register: the fleet registry, if any, at the configured rate."""
    try:
        return Admission(Path(server.fleet) if server.fleet else None, server.register_rate)
    except ValueError as exc:
        raise ConfigError(f"server.fleet = {server.fleet!r}: {exc}") from None


def check_resume(store: Store, cfg: RunConfig) -> None:
    """Refuse to resume a state directory that belongs to another run or algorithm."""
    for key, value in (("run_id", cfg.run.id), ("algorithm", cfg.run.algorithm)):
        stored = store.meta(key)
        if stored is None:
            store.set_meta(key, value)
        elif stored != value:
            raise ConfigError(
                f"state dir {store.dir} holds run with {key} {stored!r}, config says {value!r}: "
                "use another run.state_dir or the same configuration"
            )


@dataclass
class RunningCoordinator:
    """A started coordinator: its engine runs in `thread` until done or stopped."""

    cfg: RunConfig
    engine: Engine
    store: Store
    meter: ByteMeter
    transports: list[ServerTransport]
    thread: threading.Thread
    board: Board | None = None
    """The latest snapshot of the run (what the HTTP endpoint serves)."""
    writer: InspectionWriter | None = None
    http: InspectServer | None = None

    def transport(self, name: str) -> ServerTransport:
        return next(t for t in self.transports if t.name == name)

    def stop(self) -> None:
        """Stop the engine and the listeners; the state stays on disk."""
        self.engine.stop()
        self.thread.join(10)
        for t in self.transports:
            t.stop()
        if self.http is not None:
            self.http.stop()
        if self.writer is not None:
            self.writer.close()  # the last round's inspection files are on disk after this
        self.store.close()


FDS_BESIDES_CONNECTIONS = 256
"""Descriptors the coordinator needs besides one per agent connection (SQLite, tensor
files, the inspection endpoint, the broker link, gRPC's own)."""


def raise_fd_limit(connections: int) -> int:
    """Raise this process's soft limit of open files towards what `connections` agent
    links need (never above the hard limit); warn, saying what to raise, when the hard
    limit is too low: past it, later agents fail to connect and nothing else says why.
    Returns the soft limit now in force."""
    need = connections + FDS_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        log.info(
            "open-file limit raised from %d to %d for up to %d agents", soft, ceiling, connections
        )
        soft = ceiling
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning(
            "server.max_connections = %d needs about %d open files, but this process may open "
            "%d: agents beyond about %d cannot connect. Raise the limit (systemd: "
            "LimitNOFILE=%d in the unit; a shell: ulimit -n %d) or lower max_connections",
            connections,
            need,
            soft,
            max(0, soft - FDS_BESIDES_CONNECTIONS),
            need,
            need,
        )
    return int(soft)


def start(
    cfg: RunConfig,
    out_dir: Path | None = None,
    fleets: Sequence[Callable[[ByteMeter], ServerTransport]] = (),
    strategy: type[Strategy] | None = None,
) -> RunningCoordinator:
    """Open the state, load the public set, start the listeners and the engine thread.

    Each round's inspections (Strategy.inspect) go to `out_dir` (default: the state dir):
    inspect/<name>_round_<NNN>.csv and <name>_heatmap.png. `fleets` make transports
    besides the configured listeners, from the run's meter (a simulation's fleet);
    `strategy` replaces the coordinator half of the run's algorithm (an experiment's own),
    the agents' half stays.
    """
    params = resolve_params(cfg)
    mqtt_login = broker_login(cfg.server)
    tls = grpc_tls(cfg.server)
    if cfg.server.grpc:
        raise_fd_limit(cfg.server.max_connections)
    admit = admission(cfg.server)
    if cfg.server.grpc and tls is None and cfg.server.insecure:
        log.warning(
            "serving plaintext gRPC on %s (insecure = true): anyone who reaches it can join "
            "as any agent and read every message; use TLS off a trusted network",
            cfg.server.grpc,
        )
    store = Store(Path(cfg.run.state_dir))
    check_resume(store, cfg)
    pub = public.build(cfg.public.dataset, cfg.public.samples)
    log.info(
        "public set %s: %d samples of %s, sha256 %s",
        pub.info.name,
        pub.num_samples,
        list(pub.info.sample_shape),
        pub.info.sha256[:12],
    )
    meter = ByteMeter()
    strategy_cls = strategy or strategies.get(cfg.run.algorithm)
    engine = Engine(cfg, strategy_cls, params, pub, store, meter, admit)
    board, writer = Board(), InspectionWriter(out_dir or Path(cfg.run.state_dir))
    engine.observers += [board.publish, writer]
    http = None
    hostport = split_hostport(cfg.server.http) if cfg.server.http else None
    if hostport is not None:
        try:
            http = InspectServer(*hostport, board).start()
        except OSError as exc:
            writer.close()
            store.close()
            raise ConfigError(f"server.http = {cfg.server.http!r}: {exc}") from None
        log.info("inspection endpoint on %s (/status, /inspect)", http.address)
    transports: list[ServerTransport] = []
    limits = ServerLimits(
        cfg.server.register_timeout_s,
        cfg.server.transfer_timeout_s,
        cfg.server.max_connections,
        cfg.server.max_inflight_bytes,
    )
    for url, credentials in (
        (cfg.server.grpc and f"grpc://{cfg.server.grpc}", Credentials(tls=tls)),
        (cfg.server.mqtt, mqtt_login),
    ):
        if not url:
            continue
        t = server_for(
            url,
            meter,
            run_id=cfg.run.id,
            options=TransportOptions(
                cfg.server.chunk_bytes, cfg.server.max_message_bytes, credentials
            ),
            limits=limits,
        )
        t.start(engine.attach(t))
        transports.append(t)
        log.info("serving %s", t.address)
    for make in fleets:
        t = make(meter)
        t.start(engine.attach(t))
        transports.append(t)
    thread = threading.Thread(target=engine.run, name="engine", daemon=True)
    thread.start()
    return RunningCoordinator(
        cfg, engine, store, meter, transports, thread, board=board, writer=writer, http=http
    )


def serve(cfg: RunConfig, report_dir: Path | None = None) -> Path:
    """Serve the run until it finishes (or a signal); write the report; return its path."""
    running = start(cfg, report_dir)
    engine = running.engine

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning(
            "signal %d: stopping; the run resumes from round %d on restart",
            signum,
            engine.completed_rounds + 1,
        )
        engine.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while running.thread.is_alive():
        running.thread.join(0.5)
    if engine.done.is_set():
        time.sleep(0.5)  # let the shutdown messages leave before the listeners close
    return finish(running, report_dir)


def finish(running: RunningCoordinator, report_dir: Path | None = None) -> Path:
    """Write the run's report (report.json, report.png) and stop; return the report's path."""
    cfg = running.cfg
    setup_tensor_bytes = running.engine.tensor_bytes.get(0, [0, 0])[1]
    rep = report.build(
        running.store,
        running.meter,
        algorithm=cfg.run.algorithm,
        setup_tensor_bytes=setup_tensor_bytes,
    )
    path = report.write(rep, report_dir or Path(cfg.run.state_dir))
    running.stop()
    log.info("report written to %s", path)
    return path

"""Run a coordinator: transports, engine, persistence and the final report."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from types import FrameType

from coordinator import public, report, strategies
from coordinator.config import ConfigError, RunConfig
from coordinator.engine import Engine
from coordinator.store import Store
from pfl_edge import params as run_params
from pfl_edge.accounting import ByteMeter
from pfl_edge.transport.base import ServerTransport
from pfl_edge.transport.factory import server_for

log = logging.getLogger("pfl_edge.coordinator")


def resolve_params(cfg: RunConfig) -> dict[str, run_params.Scalar]:
    strategy = strategies.get(cfg.run.algorithm)
    try:
        return run_params.resolve({**run_params.COMMON, **strategy.params}, cfg.algorithm)
    except ValueError as exc:
        raise ConfigError(f"[algorithm] {exc}") from None


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


def serve(cfg: RunConfig, report_dir: Path | None = None) -> Path:
    """Serve the run until it finishes; write the report; return its path."""
    params = resolve_params(cfg)
    store = Store(Path(cfg.run.state_dir))
    check_resume(store, cfg)
    pub = public.build(cfg.public.dataset, cfg.public.samples)
    log.info("public set %s: %d samples of %s, sha256 %s", pub.info.name, pub.num_samples,
             list(pub.info.sample_shape), pub.info.sha256[:12])
    meter = ByteMeter()
    engine = Engine(cfg, strategies.get(cfg.run.algorithm), params, pub, store, meter)
    transports: list[ServerTransport] = []
    for url in (cfg.server.grpc and f"grpc://{cfg.server.grpc}", cfg.server.mqtt):
        if not url:
            continue
        t = server_for(url, meter, run_id=cfg.run.id, chunk_bytes=cfg.server.chunk_bytes,
                       max_message_bytes=cfg.server.max_message_bytes)
        t.start(engine.attach(t))
        transports.append(t)
        log.info("serving %s", t.address)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning("signal %d: stopping; the run resumes from round %d on restart",
                    signum, engine.completed_rounds + 1)
        engine.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        engine.run()
        if engine.done.is_set():
            time.sleep(0.5)  # let the shutdown messages leave before the listeners close
    finally:
        for t in transports:
            t.stop()
    pub_bytes = engine.tensor_bytes.get(0, [0, 0])[1]
    rep = report.build(store, meter, algorithm=cfg.run.algorithm, setup_tensor_bytes=pub_bytes)
    path = report.write(rep, report_dir or Path(cfg.run.state_dir))
    store.close()
    log.info("report written to %s", path)
    return path

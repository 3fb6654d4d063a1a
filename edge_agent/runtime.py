"""The edge agent: registers, fetches the public set once, runs the coordinator's tasks
with its learner, reconnects with backoff when the coordinator is away, and at the end
exports its personalized model to ONNX."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_agent import checkpoint, learners, training
from edge_agent.learners.base import Learner, LearnerContext, LearnerReply, Span, TaskView
from edge_agent.models import build_model, parameter_count
from edge_agent.onnx_export import export_onnx
from edge_agent.peers import PeerExchange
from pfl_edge import codec, public_data
from pfl_edge import peer_exchange as px
from pfl_edge.accounting import ByteMeter
from pfl_edge.constants import KEEPALIVE_SECONDS
from pfl_edge.data._npz import load_npz_arrays, save_npz_atomic
from pfl_edge.data.fetch import default_cache_dir
from pfl_edge.data.partition import ClientData, load_client
from pfl_edge.errors import Rejection
from pfl_edge.framing import Message, kind_of
from pfl_edge.retry import backoff_delays, retry
from pfl_edge.transport.base import ClientTransport, TransportClosed
from pfl_edge.transport.credentials import Credentials, TransportOptions
from pfl_edge.transport.factory import client_for
from pfl_edge.v1 import messages_pb2 as pb
from pfl_edge.values import Scalar, from_values

log = logging.getLogger("pfl_edge.agent")

FINISH = "finish"
FATAL_CODES = {
    pb.ERROR_CODE_INVALID_ARGUMENT,
    pb.ERROR_CODE_PERMISSION_DENIED,
    pb.ERROR_CODE_UNAUTHENTICATED,
    pb.ERROR_CODE_FAILED_PRECONDITION,
}
"""Refusals of a registration that a reconnect cannot fix: the agent stops and says why.
Once registered, a refused message (say, a result for a round that closed without it)
costs the link only: the agent reconnects and takes the next task."""

MAX_REFUSALS_IN_A_ROW = 5

BUSY_CODES = {pb.ERROR_CODE_RESOURCE_EXHAUSTED}
"""Refusals that say "not now" (too many registrations at once): wait, back off, retry."""


class AgentStopped(Exception):
    """The coordinator refused this agent for good."""


@dataclass(frozen=True)
class AgentOptions:
    agent_id: str
    coordinator: str
    model: str
    data: Path
    out_dir: Path
    run_id: str = "default"
    """Names the run on a shared broker (MQTT topics); gRPC ignores it."""
    credentials: Credentials = field(default_factory=Credentials)
    """TLS files (both transports: the CA that signed the coordinator's or broker's
    certificate, and this agent's certificate and key for mutual TLS) and, on MQTT only,
    the broker username and password."""
    cache_dir: Path | None = None
    num_classes: int = 10
    seed: int = 0
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default."""
    keepalive_s: float = KEEPALIVE_SECONDS
    """gRPC: ping an idle link this often; a silently dead one is re-dialled within about
    twice this."""
    connect_timeout_s: float = 10.0
    give_up_after_s: float = 600.0
    """Stop retrying a connection after this long without the coordinator."""
    save_state: checkpoint.SaveState = "full"
    """What is saved after each round for a restart (edge_agent.checkpoint)."""
    export_onnx: bool = True
    """At the end, export the model to out_dir/model.onnx and check it with onnxruntime
    (a simulation of many agents may leave it out)."""


class Agent:
    def __init__(
        self,
        opts: AgentOptions,
        *,
        data: ClientData | None = None,
        public: tuple[np.ndarray, str] | None = None,
    ) -> None:
        """`data` replaces the file at `opts.data`; `public` is a public set at hand with
        its sha256 (a simulation's agents share one copy), used when it is the run's."""
        self.opts = opts
        if opts.threads:
            torch.set_num_threads(opts.threads)
        seed = int.from_bytes(
            hashlib.sha256(f"{opts.seed}:{opts.agent_id}".encode()).digest()[:4], "little"
        )
        training.seed_everything(seed)
        self.rng = np.random.default_rng(seed)
        self.data: ClientData = data if data is not None else load_client(opts.data)
        shape = self.data.x_train.shape[1:]
        self.input_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.model = build_model(opts.model, self.input_shape, opts.num_classes)
        self.meter = ByteMeter()
        self.cache_dir = (opts.cache_dir or default_cache_dir()) / "public"
        self.learner: Learner | None = None
        self.run_config: pb.RunConfig | None = None
        self.public: np.ndarray | None = None
        self._public_at_hand = public
        self.pending: list[Message] = []
        self.sent: dict[tuple[int, int], Message] = {}
        self.peers = PeerExchange(opts.agent_id, opts.run_id, self.meter)
        self.transport: ClientTransport | None = None
        self.final: dict[str, float] = {}
        self._seq = 0
        self.registered = False
        """Whether the coordinator accepted this connection's registration."""
        self.refusals = 0
        """Messages refused since the last task answered."""

    def run(self) -> dict[str, float]:
        """Take part until the coordinator shuts the run down; returns the final metrics."""
        log.info(
            "agent %s: %s (%d params), %d train / %d test samples, coordinator %s",
            self.opts.agent_id,
            self.opts.model,
            parameter_count(self.model),
            len(self.data.x_train),
            len(self.data.x_test),
            self.opts.coordinator,
        )
        busy_delays = backoff_delays()
        while True:
            try:
                self._session()
                return self.final
            except TransportClosed as exc:
                if exc.code == pb.ERROR_CODE_ABORTED:
                    raise AgentStopped(
                        f"coordinator closed this connection: {exc.reason}; stopping"
                    ) from exc
                if exc.refused and exc.code in FATAL_CODES and not self.registered:
                    raise AgentStopped(f"coordinator refused this agent: {exc.reason}") from exc
                if exc.code in BUSY_CODES and not self.registered:
                    delay = next(busy_delays)
                    log.warning("coordinator busy (%s); retrying in %.1f s", exc.reason, delay)
                    time.sleep(delay)
                    continue
                if exc.refused:
                    self.refusals += 1
                    if self.refusals >= MAX_REFUSALS_IN_A_ROW:
                        raise AgentStopped(
                            f"coordinator refused {self.refusals} messages in a row, last: "
                            f"{exc.reason}"
                        ) from exc
                    log.error("coordinator refused a message: %s; reconnecting", exc.reason)
                else:
                    log.warning("connection lost (%s); reconnecting", exc.reason)

    def _session(self) -> None:
        """One connection, until the run is over. Raises TransportClosed."""
        t = client_for(
            self.opts.coordinator,
            self.meter,
            agent_id=self.opts.agent_id,
            run_id=self.opts.run_id,
            options=TransportOptions(
                credentials=self.opts.credentials, keepalive_s=self.opts.keepalive_s
            ),
        )
        self.transport = t
        self.registered = False
        try:
            retry(
                lambda: t.connect(self.opts.connect_timeout_s),
                retry_on=(TransportClosed,),
                deadline_s=self.opts.give_up_after_s,
                on_retry=self._on_retry,
            )
            self.register()
            while True:
                msg = t.recv(None)
                if msg is not None and self.handle(msg):
                    return
        finally:
            t.close()

    @staticmethod
    def _on_retry(exc: BaseException, delay: float) -> None:
        log.warning("%s; retrying in %.1f s", exc, delay)

    def register(self) -> bool:
        """Send this agent's Register on its transport (False: the run goes on)."""
        self._send(0, register=self._registration())
        return False

    def _registration(self) -> pb.Register:
        cached = (
            self.run_config.public_data.sha256
            if self.public is not None and self.run_config is not None
            else ""
        )
        return pb.Register(
            device=device_profile(),
            model=pb.ModelInfo(
                architecture=self.opts.model,
                parameter_count=parameter_count(self.model),
                input_shape=list(self.input_shape),
                num_classes=self.opts.num_classes,
            ),
            num_train_samples=len(self.data.x_train),
            num_test_samples=len(self.data.x_test),
            public_data_sha256=cached,
        )

    def handle(self, msg: Message) -> bool:
        """Act on one message from the coordinator; True once it ended the run."""
        env = msg.envelope
        kind = kind_of(env)
        if kind == "run_config":
            self.registered = True
            self._configure(env.run_config)
        elif kind == "public_data":
            self._store_public(msg)
            pending, self.pending = self.pending, []
            for task_msg in pending:
                self._task(task_msg)
        elif kind == "task":
            if self.learner is None:
                self.pending.append(msg)
            else:
                self._task(msg)
        elif kind == "error":
            log.error("coordinator refused a message: %s", env.error.message)
        elif kind == "shutdown":
            log.info("coordinator ended the run: %s", env.shutdown.reason)
            return True
        return False

    def _configure(self, cfg: pb.RunConfig) -> None:
        self.run_config = cfg
        info = cfg.public_data
        if self.public is None:
            self.public = self._cached_public(info)
        if self.public is None:
            log.info("fetching public set %s (%.1f MB) once", info.name, info.size_bytes / 1e6)
            self._send(0, public_data_request=pb.PublicDataRequest(sha256=info.sha256))
        else:
            self._make_learner()
        log.info(
            "run: %s, %d of %d rounds done", cfg.algorithm, cfg.completed_rounds, cfg.total_rounds
        )

    def _cached_public(self, info: pb.PublicDataInfo) -> np.ndarray | None:
        if self._public_at_hand is not None and self._public_at_hand[1] == info.sha256:
            return self._public_at_hand[0]
        path = self.cache_dir / f"{info.sha256}.npz"
        if not path.exists():
            return None
        images = load_npz_arrays(path, ["images"])["images"]
        if public_data.images_sha256(images) != info.sha256:
            log.warning("cached public set %s is corrupt; fetching it again", path)
            return None
        return images

    def _store_public(self, msg: Message) -> None:
        assert self.run_config is not None
        want = self.run_config.public_data.sha256
        images = codec.decode(msg.envelope.public_data.images, msg.blobs)
        got = public_data.images_sha256(images)
        if got != want:
            raise TransportClosed(f"public set hash {got[:12]} does not match {want[:12]}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        save_npz_atomic(self.cache_dir / f"{want}.npz", {"images": images})
        self.public = images
        log.info("public set verified (sha256 %s) and cached", want[:12])
        self._make_learner()

    def _make_learner(self) -> None:
        if self.learner is not None or self.run_config is None or self.public is None:
            return
        cls = learners.get(self.run_config.algorithm)
        self.learner = cls(
            LearnerContext(
                agent_id=self.opts.agent_id,
                model=self.model,
                data=self.data,
                public=self.public,
                params=from_values(self.run_config.params),
                num_classes=self.opts.num_classes,
                rng=self.rng,
            )
        )
        identity = self._identity()
        if identity is not None:
            done = checkpoint.restore(
                self._state_path, identity, self.model, self.learner.optimizers, self.rng
            )
            if done is not None:
                log.info("resumed from the state saved after round %d (%s)", done, self._state_path)

    @property
    def _state_path(self) -> Path:
        return self.opts.out_dir / checkpoint.FILE_NAME

    def _identity(self) -> checkpoint.Identity | None:
        """Whose saved state this agent may take; None when saving is off or for a
        coordinator too old to say which run this is (then nothing is saved or restored)."""
        cfg = self.run_config
        if cfg is None or not cfg.run_uid or self.opts.save_state == "off":
            return None
        return checkpoint.Identity(cfg.run_uid, self.opts.agent_id, self.opts.model, cfg.algorithm)

    def _task(self, msg: Message) -> None:
        env = msg.envelope
        task = env.task
        key = (env.round, task.phase)
        self.peers.take(self.transport, env.round)
        if key in self.sent:
            log.info("round %d phase %d asked again; resending the answer", *key)
            assert self.transport is not None
            self.peers.share_again(self.transport, key)
            again = self.sent[key]
            self._seq += 1
            again.envelope.seq = self._seq  # a new message: the coordinator drops repeats
            self.transport.send(again)
            return
        assert self.learner is not None and self.public is not None
        framework: dict[str, Scalar] = {}
        gathered: np.ndarray | None = None
        if task.action == FINISH:
            reply = self._finish()
            spans: list[Span] = []
        else:
            try:
                # The framework's params (peer exchange) are the runtime's, not the learner's.
                params, framework = px.split_params(from_values(task.params))
                tensors = codec.decode_many(task.tensors, msg.blobs, require_finite=True)
                gather = px.GatherSpec.from_params(framework)
                public_indices = public_data.resolve(task.public, len(self.public))
            except (Rejection, ValueError) as exc:
                log.error("round %d: unusable task from the coordinator: %s", env.round, exc)
                return
            if gather is not None:
                part, gathered = self.peers.gather(self.transport, env.round, gather)
                if part is not None:
                    tensors[gather.name] = part
            view = TaskView(
                round=env.round,
                phase=task.phase,
                action=task.action,
                tensors=tensors,
                params=params,
                public_indices=public_indices,
            )
            reply = self.learner.handle(view)
            spans = self.learner.take_spans()
        wire = str(self.learner.ctx.params.get("wire", "float32"))
        out, metrics = dict(reply.tensors), dict(reply.metrics)
        share = framework.get(px.SHARE)
        if share is not None:
            assert self.transport is not None
            exchange = int(framework[px.EXCHANGE])
            self.peers.share(self.transport, env, str(share), exchange, out, wire)
        if gathered is not None:
            out[px.GATHERED] = gathered
        if share is not None or gathered is not None:
            metrics.update(self.peers.metrics(env.round))
        blobs: codec.Blobs = []
        result = pb.Result(
            phase=task.phase,
            action=task.action,
            tensors=codec.encode_many(out, wire, blobs),  # type: ignore[arg-type]
            metrics=metrics,
            busy=_cover(spans),
        )
        self._send(env.round, remember=key, blobs=blobs, result=result)
        self.refusals = 0
        acc = reply.metrics.get("test_acc")
        if acc is not None:  # the round's last reply
            log.info("round %d: test accuracy %.4f", env.round, acc)
            identity = self._identity()
            if identity is not None and task.action != FINISH:
                checkpoint.save(
                    self._state_path,
                    identity,
                    env.round,
                    self.model,
                    self.learner.optimizers if self.opts.save_state == "full" else None,
                    self.rng,
                )

    def _finish(self) -> LearnerReply:
        start = time.time()
        acc = training.evaluate(self.model, self.data.x_test, self.data.y_test)
        self.final = {"final_test_acc": acc}
        if self.opts.export_onnx:
            self.opts.out_dir.mkdir(parents=True, exist_ok=True)
            rep = export_onnx(
                self.model,
                self.input_shape,
                self.opts.out_dir / "model.onnx",
                check_samples=self.data.x_test[:64],
            )
            log.info(
                "exported %s (%d bytes); onnxruntime vs torch max abs diff %.2e",
                rep.path,
                rep.file_bytes,
                rep.max_abs_diff,
            )
            self.final |= {
                "onnx_max_abs_diff": rep.max_abs_diff,
                "onnx_bytes": float(rep.file_bytes),
                "export_s": time.time() - start,
            }
        self.final |= {
            "agent_bytes_up": float(self.meter.total(direction="up")),
            "agent_bytes_down": float(self.meter.total(direction="down")),
        }
        return LearnerReply({}, dict(self.final))

    def _send(
        self,
        rnd: int,
        remember: tuple[int, int] | None = None,
        blobs: codec.Blobs | None = None,
        **body: Any,
    ) -> None:
        """Send one message; `remember` keeps it to answer a repeated task after a reconnect."""
        assert self.transport is not None
        self._seq += 1
        env = pb.Envelope(
            agent_id=self.opts.agent_id, run_id=self.opts.run_id, round=rnd, seq=self._seq, **body
        )
        msg = Message(env, blobs or [])
        if remember is not None:
            self.sent[remember] = msg
        self.transport.send(msg)


def _cover(spans: list[Span]) -> list[pb.Interval]:
    """One interval from the first span's start to the last one's end: a learner's spans
    within one task are back to back, and the coordinator only needs their union."""
    if not spans:
        return []
    for s in spans:
        log.debug("%s: %.3f s", s.what, s.end_unix - s.start_unix)
    return [
        pb.Interval(
            start_unix=min(s.start_unix for s in spans), end_unix=max(s.end_unix for s in spans)
        )
    ]


def device_profile() -> pb.DeviceProfile:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 0
    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return pb.DeviceProfile(
        cpu_arch=platform.machine(),
        cpu_cores=os.cpu_count() or 0,
        memory_bytes=memory,
        accelerator=accelerator,
        hostname=socket.gethostname(),
    )

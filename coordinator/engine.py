"""The coordinator's engine: the round core (pfl_edge.core.rounds) between the transports
and the store. It checks who sends what (identity, registration, the public set),
decodes Results into Replies and encodes the core's Dispatches into Tasks, counts
tensor bytes, persists each completed round and publishes snapshots to observers.

One thread owns all run state; transports hand it envelopes through a queue and get each
verdict back as a future, so a refused message changes nothing. The rules of a round are
not here: they are the core's, which simulations run too.
"""

from __future__ import annotations

import functools
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from coordinator.admission import Admission
from coordinator.config import ID_PATTERN, RunConfig
from coordinator.inspection import Snapshot
from coordinator.public import PublicSet
from coordinator.store import Store
from coordinator.strategies.base import Inspection, RunContext, Strategy
from pfl_edge import codec, errors
from pfl_edge import peer_exchange as px
from pfl_edge.accounting import ByteMeter
from pfl_edge.core.messages import AgentInfo, Reply
from pfl_edge.core.rounds import FINISH, Dispatch, Finished, RoundCore, RoundDone, Rules
from pfl_edge.errors import Rejection
from pfl_edge.framing import Message, kind_of
from pfl_edge.logs import Throttled
from pfl_edge.transport.base import Identity, Inbound, ServerTransport
from pfl_edge.v1 import messages_pb2 as pb
from pfl_edge.v1.tensor_pb2 import Tensor
from pfl_edge.values import Scalar, to_values

log = logging.getLogger("pfl_edge.coordinator")
_refusals = Throttled(log)

PUBLIC_SENDS_PER_REGISTRATION = 2
"""Public-set requests an agent may make per registration (it needs one; a retry)."""

FLUSH_INTERVAL_S = 1.0
"""Registrations and final reports wait at most this long to be written, in one
transaction: a commit per message (about 3 ms) made registering 10,000 agents take
minutes. One lost on a crash costs nothing: the agent registers again when it redials."""

PUBLISH_INTERVAL_S = 0.25
"""Snapshots of registrations and disconnects go to observers at most this often
(a completed round's at once)."""

REGISTRY_CHECK_S = 1.0


@dataclass
class AgentRecord:
    """What the engine knows of a registered agent beyond the core's AgentInfo."""

    transport: str
    device: dict[str, Any]
    cert_sha256: str | None = None
    """Fingerprint of the client certificate it registered with (mutual TLS)."""
    public_sent: int = 0
    """Public sets sent since it registered."""


class Engine:
    def __init__(
        self,
        cfg: RunConfig,
        strategy_cls: type[Strategy],
        params: Mapping[str, Scalar],
        public: PublicSet,
        store: Store,
        meter: ByteMeter,
        admission: Admission,
    ) -> None:
        """`admission` decides who may register."""
        self.cfg = cfg
        self.admission = admission
        self.params = dict(params)
        self.public = public
        self.store = store
        self.run_uid = store.run_uid()
        self.meter = meter
        self.strategy = strategy_cls(
            RunContext(params, cfg.public.num_classes, cfg.public.per_round, cfg.run.seed)
        )
        run = cfg.run
        rules = Rules(
            rounds=run.rounds,
            min_agents=run.min_agents,
            sample_fraction=run.sample_fraction,
            quorum=run.quorum,
            phase_timeout_s=run.phase_timeout_s,
            finish_timeout_s=run.finish_timeout_s,
            disconnect_grace_s=run.disconnect_grace_s,
            seed=run.seed,
            public_samples=public.num_samples,
            public_per_round=cfg.public.per_round,
        )
        self.core = RoundCore(
            rules,
            self.strategy,
            reach=self._reach_each_other,
            salt=secrets.randbits(48),
            finals=store.finals(),
        )
        self.transports: dict[str, ServerTransport] = {}
        self.agents: dict[str, AgentRecord] = {}
        self.tensor_bytes: dict[int, list[int]] = {}
        self.done = threading.Event()
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._seq = 0
        self._last_seq: dict[str, int] = {}
        """Highest message number seen per agent since it registered."""
        self._tasks: dict[str, tuple[int, int, Message]] = {}
        """Each agent's latest encoded task (round, phase, message): resent, not re-encoded."""
        self._unsaved_agents: dict[str, tuple[dict[str, Any], str]] = {}
        self._unsaved_finals: dict[str, dict[str, float]] = {}
        self._flushed = 0.0
        self._registry_checked = 0.0
        self._published = 0.0
        self._publish_due = False
        self._cpu_mark = 0.0
        self.observers: list[Callable[[Snapshot], None]] = []
        """Called on the engine thread with each Snapshot (the service's HTTP board and
        inspection files); they must return quickly and keep no reference to engine state."""
        self._inspections: Mapping[str, Inspection] = {}
        self._inspected_round = 0
        self._resume()

    # What tests and the service read.

    @property
    def completed_rounds(self) -> int:
        return self.core.completed_rounds

    @property
    def phase(self) -> Any:
        """The open phase (pfl_edge.core.rounds.Phase) or None."""
        return self.core.phase

    @property
    def round_metrics(self) -> dict[str, dict[str, float]]:
        return self.core.round_metrics

    def progress(self) -> str:
        """One line on where the run is (read from another thread: a glimpse, not a lock)."""
        phase = self.core.phase
        if self.done.is_set():
            return "finished"
        if phase is None:
            return (
                f"{len(self.core.connected)} of {self.cfg.run.min_agents} agents connected, "
                f"{self.completed_rounds} of {self.cfg.run.rounds} rounds done"
            )
        what = "finish" if phase.round > self.cfg.run.rounds else f"round {phase.round}"
        answered = len(phase.tasks) - len(phase.pending)
        return f"{what} phase {phase.index}: {answered} of {len(phase.tasks)} answered"

    def is_connected(self, agent_id: str) -> bool:
        return agent_id in self.core.connected

    # Transport side (any thread).

    def attach(self, transport: ServerTransport) -> Inbound:
        self.transports[transport.name] = transport
        return _Inbound(self, transport.name)

    def submit(
        self, transport: str, peer: str | None, msg: Message, identity: Identity | None = None
    ) -> Future[list[Message]]:
        fut: Future[list[Message]] = Future()
        self._events.put(("message", transport, peer, msg, identity, fut))
        return fut

    def disconnected(self, agent_id: str, reason: str) -> None:
        self._events.put(("disconnect", agent_id, reason))

    def stop(self) -> None:
        self._events.put(("stop",))

    def flushed(self) -> Future[None]:
        """Done once every registration and final report taken so far is in the store."""
        fut: Future[None] = Future()
        self._events.put(("flush", fut))
        return fut

    # Engine thread.

    def run(self) -> None:
        """Serve until the run is finished (or `stop`)."""
        log.info(
            "run %s: %s, %d rounds, waiting for %d agents",
            self.cfg.run.id,
            self.cfg.run.algorithm,
            self.cfg.run.rounds,
            self.cfg.run.min_agents,
        )
        self._cpu_mark = time.thread_time()
        self._publish(inspect=True)  # a resumed run shows its last round at once
        try:
            while not self.done.is_set():
                try:
                    event = self._events.get(timeout=self._wait_s())
                except queue.Empty:
                    event = None
                if event is not None:
                    if event[0] == "stop":
                        break
                    self._handle(event)
                now = time.time()
                self._check_registry(now)
                self._advance()
                if now >= self._flushed + FLUSH_INTERVAL_S:
                    self._flush()
                if self._publish_due and now >= self._published + PUBLISH_INTERVAL_S:
                    self._publish()
        finally:
            self._flush()

    def _wait_s(self) -> float:
        """Until the core's next wakeup, at most until the next registry check."""
        wakeup = self.core.wakeup()
        limit = REGISTRY_CHECK_S
        if self._unsaved_agents or self._unsaved_finals:
            limit = min(limit, FLUSH_INTERVAL_S)
        if self._publish_due:
            limit = min(limit, PUBLISH_INTERVAL_S)
        if wakeup is None:
            return limit
        return max(0.001, min(limit, wakeup - time.time()))

    def _check_registry(self, now: float) -> None:
        """At most once a second: if the fleet registry changed, end the links of the
        connected agents it no longer admits (their next registration is refused)."""
        if now < self._registry_checked + REGISTRY_CHECK_S:
            return
        self._registry_checked = now
        if not self.admission.reload():
            return
        for agent_id in sorted(self.core.connected):
            rec = self.agents[agent_id]
            reason = self.admission.refusal(agent_id, rec.cert_sha256)
            if reason is None:
                continue
            log.warning("agent %s removed from the fleet: %s; closing its link", agent_id, reason)
            self.core.leave(agent_id, now)
            transport = self.transports.get(rec.transport)
            if transport is not None:
                transport.disconnect(
                    agent_id, pb.ERROR_CODE_PERMISSION_DENIED, f"removed from the fleet: {reason}"
                )

    def _handle(self, event: tuple[Any, ...]) -> None:
        if event[0] == "flush":
            self._flush()
            event[1].set_result(None)
            return
        if event[0] == "disconnect":
            if event[1] in self.core.connected:
                self.core.leave(event[1], time.time())
                self._publish_due = True
                log.info("agent %s disconnected (%s)", event[1], event[2])
            return
        _, transport, peer, msg, identity, fut = event
        env = msg.envelope
        if not fut.set_running_or_notify_cancel():
            return  # the sender's stream ended before its turn: nothing to answer or change
        try:
            fut.set_result(self._dispatch(transport, peer, msg, identity))
        except Rejection as r:
            _refusals.warning(
                "refused %s from %s: %s", kind_of(env), peer or env.agent_id or "?", r
            )
            fut.set_exception(r)
        except Exception as exc:
            log.exception("internal error on %s from %s", kind_of(env), env.agent_id)
            fut.set_exception(Rejection(pb.ERROR_CODE_INTERNAL, f"coordinator error: {exc}"))

    def _dispatch(
        self, transport: str, peer: str | None, msg: Message, identity: Identity | None
    ) -> list[Message]:
        env = msg.envelope
        kind = kind_of(env)
        if kind == "register":
            replies = self._register(transport, peer, env, identity)
            self._last_seq[env.agent_id] = 0
            return replies
        rec = self._authenticate(peer, env)
        if env.seq and env.seq <= self._last_seq.get(env.agent_id, 0):
            # An at-least-once transport (MQTT QoS 1) delivered this message again.
            log.debug("ignoring repeated message %d from %s", env.seq, env.agent_id)
            return []
        self._last_seq[env.agent_id] = env.seq
        if kind == "public_data_request":
            return [self._public_data(env, rec)]
        if kind == "result":
            self._accept(msg)
            return []
        if kind == "metrics":
            return []
        raise errors.invalid(f"agents may not send {kind!r} messages")

    def _public_data(self, env: pb.Envelope, rec: AgentRecord) -> Message:
        if env.public_data_request.sha256 not in ("", self.public.info.sha256):
            raise errors.invalid(
                f"public data {env.public_data_request.sha256[:12]} is not this run's "
                f"({self.public.info.sha256[:12]})"
            )
        if rec.public_sent >= PUBLIC_SENDS_PER_REGISTRATION:
            raise errors.too_large(
                f"public set already sent {rec.public_sent} times since {env.agent_id} "
                "registered: keep the copy (it is checked by its sha256)"
            )
        rec.public_sent += 1
        images, blobs = self._public_encoded
        self._count_tensor(0, down=codec.encoded_bytes(images, blobs))
        return self._message(
            env.agent_id,
            0,
            list(blobs),
            public_data=pb.PublicData(info=self.public.info, images=images),
        )

    @functools.cached_property
    def _public_encoded(self) -> tuple[Tensor, codec.Blobs]:
        """The public set encoded once: every agent's copy is sent from these buffers."""
        blobs: codec.Blobs = []
        return codec.encode("images", self.public.images, blobs=blobs), blobs

    def _authenticate(self, peer: str | None, env: pb.Envelope) -> AgentRecord:
        rec = self.agents.get(env.agent_id)
        if peer is None:
            if rec is None:
                raise Rejection(
                    pb.ERROR_CODE_NOT_FOUND, f"unknown agent {env.agent_id!r}: send Register first"
                )
            raise Rejection(
                pb.ERROR_CODE_UNAUTHENTICATED,
                "this connection has not registered: send Register first",
            )
        if peer != env.agent_id:
            raise Rejection(
                pb.ERROR_CODE_PERMISSION_DENIED,
                f"agent {peer!r} may not send for agent {env.agent_id!r}",
            )
        if rec is None:
            raise Rejection(
                pb.ERROR_CODE_NOT_FOUND, f"unknown agent {env.agent_id!r}: send Register first"
            )
        removed = self.admission.refusal(env.agent_id, rec.cert_sha256)
        if removed is not None:
            raise Rejection(pb.ERROR_CODE_PERMISSION_DENIED, f"removed from the fleet: {removed}")
        return rec

    def _register(
        self, transport: str, peer: str | None, env: pb.Envelope, identity: Identity | None
    ) -> list[Message]:
        agent_id, reg = env.agent_id, env.register
        if not ID_PATTERN.match(agent_id):
            raise errors.invalid(f"agent id {agent_id[:80]!r} must be 1-64 letters, digits, '_.-'")
        if peer is not None and peer != agent_id:
            raise Rejection(
                pb.ERROR_CODE_PERMISSION_DENIED, f"agent {peer!r} may not register as {agent_id!r}"
            )
        self.admission.check(agent_id, reg, identity)
        want_shape = list(self.public.info.sample_shape)
        if list(reg.model.input_shape) != want_shape:
            raise Rejection(
                pb.ERROR_CODE_FAILED_PRECONDITION,
                f"model input shape {list(reg.model.input_shape)} does not fit this "
                f"run's data {want_shape}",
            )
        if reg.model.num_classes != self.cfg.public.num_classes:
            raise Rejection(
                pb.ERROR_CODE_FAILED_PRECONDITION,
                f"model has {reg.model.num_classes} classes, this run "
                f"{self.cfg.public.num_classes}",
            )
        if reg.num_train_samples == 0 or reg.model.parameter_count == 0:
            raise errors.invalid("registration needs num_train_samples and parameter_count > 0")
        info = AgentInfo(
            agent_id,
            reg.model.architecture,
            reg.model.parameter_count,
            reg.num_train_samples,
            reg.model.num_classes,
            tuple(reg.model.input_shape),
        )
        device = {
            "cpu_arch": reg.device.cpu_arch,
            "cpu_cores": reg.device.cpu_cores,
            "memory_bytes": reg.device.memory_bytes,
            "accelerator": reg.device.accelerator,
            "hostname": reg.device.hostname,
            "num_test_samples": reg.num_test_samples,
        }
        known = agent_id in self.agents
        self.agents[agent_id] = AgentRecord(
            transport, device, cert_sha256=identity.cert_sha256 if identity else None
        )
        resend = self.core.join(info, transport, time.time())
        self._unsaved_agents[agent_id] = ({**info.__dict__, **device}, transport)
        self._publish_due = True
        log.info(
            "agent %s %s (%s, %d params, %d samples) over %s",
            agent_id,
            "reconnected" if known else "registered",
            info.architecture,
            info.parameter_count,
            info.num_train_samples,
            transport,
        )
        replies = [self._message(agent_id, self.completed_rounds, run_config=self._run_config())]
        if self.done.is_set():
            replies.append(self._message(agent_id, 0, shutdown=pb.Shutdown(reason="run finished")))
        elif resend is not None:
            replies.append(self._task(resend))
        return replies

    def _run_config(self) -> pb.RunConfig:
        cfg = pb.RunConfig()
        cfg.CopyFrom(self._run_config_base)
        cfg.completed_rounds = self.completed_rounds
        return cfg

    @functools.cached_property
    def _run_config_base(self) -> pb.RunConfig:
        return pb.RunConfig(
            algorithm=self.cfg.run.algorithm,
            total_rounds=self.cfg.run.rounds,
            public_data=self.public.info,
            params=to_values(self.params),
            chunk_bytes=self.cfg.server.chunk_bytes,
            max_message_bytes=self.cfg.server.max_message_bytes,
            run_uid=self.run_uid,
        )

    def _accept(self, msg: Message) -> None:
        env = msg.envelope
        res = env.result
        self.core.check(env.agent_id, env.round, res.phase, res.action)
        tensors = codec.decode_many(res.tensors, msg.blobs, require_finite=True)
        reply = Reply(res.action, tensors, dict(res.metrics))
        busy = [(b.start_unix, b.end_unix) for b in res.busy]
        self.core.accept(env.agent_id, env.round, res.phase, reply, busy)
        self._count_tensor(
            env.round, up=sum(codec.encoded_bytes(t, msg.blobs) for t in res.tensors)
        )
        if res.action == FINISH:
            self._unsaved_finals[env.agent_id] = reply.metrics

    # Round progression.

    def _advance(self) -> None:
        """Everything the core's rules allow now, without waiting in between."""
        while events := self.core.step(time.time()):
            for event in events:
                if isinstance(event, Dispatch):
                    self._send(event.agent_id, self._task(event))
                elif isinstance(event, RoundDone):
                    self._complete_round(event)
                elif isinstance(event, Finished):
                    self._finish()

    def _reach_each_other(self, agent_ids: Collection[str]) -> bool:
        """Whether the agents of a phase can exchange tensors directly: all on one transport
        with peer exchange, and no other agent connected there (it would get them too)."""
        names = {self.agents[a].transport for a in agent_ids}
        if len(names) != 1:
            return False
        (name,) = names
        transport = self.transports.get(name)
        if transport is None or not transport.supports_peer_exchange:
            return False
        members = set(agent_ids)
        return not any(
            self.agents[a].transport == name for a in self.core.connected if a not in members
        )

    def _task(self, d: Dispatch) -> Message:
        """The task message of `d`: encoded (and its tensor bytes counted) once."""
        cached = self._tasks.get(d.agent_id)
        if cached is not None and cached[:2] == (d.round, d.phase):
            return cached[2]
        ins = d.instruction
        blobs: codec.Blobs = []
        tensors = codec.encode_many(ins.tensors, ins.wire, blobs)
        self._count_tensor(d.round, down=sum(codec.encoded_bytes(t, blobs) for t in tensors))
        task = pb.Task(
            phase=d.phase,
            action=ins.action,
            public=d.public,
            params=to_values(ins.params),
            tensors=tensors,
        )
        msg = self._message(d.agent_id, d.round, blobs, task=task)
        self._tasks[d.agent_id] = (d.round, d.phase, msg)
        return msg

    def _send(self, agent_id: str, msg: Message) -> None:
        rec = self.agents[agent_id]
        transport = self.transports.get(rec.transport)
        if transport is None or not transport.send(agent_id, msg):
            log.info("agent %s unreachable now; its task waits for its reconnect", agent_id)

    def _complete_round(self, done: RoundDone) -> None:
        rnd, wall = done.round, done.wall_s
        cpu = time.thread_time()
        cpu_s, self._cpu_mark = cpu - self._cpu_mark, cpu
        self._tasks.clear()
        accs = [m["test_acc"] for m in done.participants.values() if "test_acc" in m]
        before = [
            m["test_acc_before_distill"]
            for m in done.participants.values()
            if "test_acc_before_distill" in m
        ]
        tensor_up, tensor_down = self.tensor_bytes.get(rnd, [0, 0])
        # Traffic between agents never passes here: each agent reports its own.
        peer = {k: int(sum(m.get(k, 0.0) for m in done.participants.values())) for k in px.METRICS}
        metrics: dict[str, Any] = {
            "round": rnd,
            "participants": len(done.participants),
            "mean_test_acc": float(sum(accs) / len(accs)) if accs else None,
            "mean_test_acc_before_distill": float(sum(before) / len(before)) if before else None,
            "bytes_up": self.meter.total(round_=rnd, direction="up") + peer[px.BYTES_UP],
            "bytes_down": self.meter.total(round_=rnd, direction="down") + peer[px.BYTES_DOWN],
            "peer_bytes_up": peer[px.BYTES_UP],
            "peer_bytes_down": peer[px.BYTES_DOWN],
            "tensor_bytes_up": tensor_up + peer[px.TENSOR_BYTES_UP],
            "tensor_bytes_down": tensor_down + peer[px.TENSOR_BYTES_DOWN],
            "wall_s": wall,
            "busy_s": done.busy_s,
            "critical_s": done.critical_s,
            "orchestration_s": max(0.0, wall - done.critical_s),
            "coordinator_cpu_s": cpu_s,
            "strategy": self.strategy.summary(),
        }
        self._flush()
        self.store.complete_round(
            rnd, metrics, self.strategy.state(), done.participants, self.meter.rows()
        )
        self._publish(inspect=True)
        n = max(1, metrics["participants"])
        acc = metrics["mean_test_acc"]
        log.info(
            "round %d/%d done: mean test acc %s over %d agents, up %.1f KB/agent, "
            "down %.1f KB/agent, %.1f s (%.0f%% orchestration)",
            rnd,
            self.cfg.run.rounds,
            "n/a" if acc is None else f"{acc:.4f}",
            n,
            metrics["bytes_up"] / n / 1e3,
            metrics["bytes_down"] / n / 1e3,
            wall,
            100 * metrics["orchestration_s"] / max(wall, 1e-9),
        )

    def _finish(self) -> None:
        self._flush()
        self.store.set_meta("finished_at", str(time.time()))
        for agent_id in sorted(self.core.connected):
            self._send(
                agent_id, self._message(agent_id, 0, shutdown=pb.Shutdown(reason="run finished"))
            )
        log.info("run %s finished", self.cfg.run.id)
        self.done.set()
        self._publish()

    # Helpers.

    def _flush(self) -> None:
        """Write the registrations and final reports taken since the last flush."""
        self._flushed = time.time()
        if self._unsaved_agents:
            self.store.save_agents(self._unsaved_agents)
            self._unsaved_agents = {}
        if self._unsaved_finals:
            self.store.save_finals(self._unsaved_finals)
            self._unsaved_finals = {}

    def _publish(self, *, inspect: bool = False) -> None:
        """Hand the observers an immutable Snapshot; with `inspect`, of the strategy's
        matrices after the last completed round too."""
        self._published, self._publish_due = time.time(), False
        if not self.observers:
            return
        if inspect:
            try:
                self._inspections = dict(self.strategy.inspect())
            except Exception:
                log.exception("%s: inspect() failed", self.cfg.run.algorithm)
                self._inspections = {}
            self._inspected_round = self.completed_rounds
        snapshot = Snapshot(
            run_id=self.cfg.run.id,
            algorithm=self.cfg.run.algorithm,
            round=self.completed_rounds,
            rounds=self.cfg.run.rounds,
            agents=len(self.agents),
            connected=len(self.core.connected),
            finished=self.done.is_set(),
            inspections=MappingProxyType(self._inspections),
            inspections_round=self._inspected_round,
            time=time.time(),
        )
        for observer in self.observers:
            try:
                observer(snapshot)
            except Exception:
                log.exception("snapshot observer %r failed", observer)

    def _message(
        self, agent_id: str, rnd: int, blobs: codec.Blobs | None = None, **body: Any
    ) -> Message:
        self._seq += 1
        env = pb.Envelope(
            agent_id=agent_id, run_id=self.cfg.run.id, round=rnd, seq=self._seq, **body
        )
        return Message(env, blobs or [])

    def _count_tensor(self, rnd: int, *, up: int = 0, down: int = 0) -> None:
        counts = self.tensor_bytes.setdefault(rnd, [0, 0])
        counts[0] += up
        counts[1] += down

    def _resume(self) -> None:
        fields = AgentInfo.__dataclass_fields__
        for agent_id, (info, transport) in self.store.agents().items():
            known = {k: info[k] for k in fields if k in info}
            known["input_shape"] = tuple(known.get("input_shape", ()))
            self.core.restore_agent(AgentInfo(**known), transport)
            self.agents[agent_id] = AgentRecord(
                transport, {k: info[k] for k in info if k not in fields}
            )
        row = self.store.last_round()
        if row is None:
            return
        self.strategy.load_state(self.store.load_state(row))
        self.meter.load_rows(self.store.byte_rows())
        self.core.completed_rounds = row.round
        for r in self.store.rounds():
            self.tensor_bytes[r.round] = [
                r.metrics["tensor_bytes_up"],
                r.metrics["tensor_bytes_down"],
            ]
        log.info(
            "resuming run %s after round %d (%d agents known)",
            self.cfg.run.id,
            row.round,
            len(self.agents),
        )


class _Inbound:
    """The Inbound one transport talks to; tags each envelope with the transport's name."""

    def __init__(self, engine: Engine, transport: str) -> None:
        self._engine, self._transport = engine, transport

    def on_message(
        self, peer: str | None, msg: Message, identity: Identity | None = None
    ) -> Future[list[Message]]:
        return self._engine.submit(self._transport, peer, msg, identity)

    def on_disconnect(self, agent_id: str, reason: str) -> None:
        self._engine.disconnected(agent_id, reason)

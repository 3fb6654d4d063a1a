"""The coordinator's round engine: registers agents, samples them, runs each round's
phases through the strategy, enforces deadlines and quorums, and persists every
completed round. One thread owns all run state; transports hand it envelopes through
a queue and get each verdict back as a future, so a refused message changes nothing.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from coordinator.admission import Admission
from coordinator.config import ID_PATTERN, RunConfig
from coordinator.inspection import Snapshot
from coordinator.public import PublicSet
from coordinator.store import Store
from coordinator.strategies.base import (
    AgentInfo,
    Inspection,
    Instruction,
    Reply,
    RunContext,
    Strategy,
)
from pfl_edge import codec, errors, public_data
from pfl_edge import peer_exchange as px
from pfl_edge.accounting import ByteMeter
from pfl_edge.errors import Rejection
from pfl_edge.framing import Message, kind_of
from pfl_edge.logs import Throttled
from pfl_edge.transport.base import Identity, Inbound, ServerTransport
from pfl_edge.v1 import messages_pb2 as pb
from pfl_edge.v1.tensor_pb2 import Tensor
from pfl_edge.values import Scalar, from_values, to_values

log = logging.getLogger("pfl_edge.coordinator")
_refusals = Throttled(log)

FINISH = "finish"
"""Framework action after the last round: export the model, report final metrics."""

WAITING_LOG_INTERVAL_S = 30.0

GATHER_WAIT_SHARE = 0.25
"""Share of the phase timeout an agent waits for missing peers' tensors of a gather."""


PUBLIC_SENDS_PER_REGISTRATION = 2
"""Public-set requests an agent may make per registration (it needs one; a retry)."""


@dataclass
class AgentRecord:
    info: AgentInfo
    transport: str
    device: dict[str, Any]
    connected: bool = False
    disconnected_at: float = 0.0
    cert_sha256: str | None = None
    """Fingerprint of the client certificate it registered with (mutual TLS)."""
    public_sent: int = 0
    """Public sets sent since it registered."""


@dataclass
class Phase:
    round: int
    index: int
    started: float
    deadline: float
    tasks: dict[str, Message]
    replies: dict[str, Reply] = field(default_factory=dict)
    busy: list[tuple[float, float]] = field(default_factory=list)
    shared: dict[str, str] = field(default_factory=dict)
    """Agent -> name of the reply tensor its instruction shares (`Instruction.share`)."""
    direct: bool = False
    """The shared tensors go agent to agent (the replies lack them), not through here."""
    exchange: int = 0
    """Id of this phase's direct exchange (peer messages carry it)."""

    @property
    def missing(self) -> list[str]:
        return [a for a in self.tasks if a not in self.replies]


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
        self.transports: dict[str, ServerTransport] = {}
        self.agents: dict[str, AgentRecord] = {}
        self.completed_rounds = 0
        self.phase: Phase | None = None
        self.round_started = 0.0
        self.round_busy: list[tuple[float, float]] = []
        self.round_metrics: dict[str, dict[str, float]] = {}
        self.tensor_bytes: dict[int, list[int]] = {}
        self.done = threading.Event()
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._seq = 0
        self._last_seq: dict[str, int] = {}
        """Highest message number seen per agent since it registered."""
        self._waiting_logged = 0.0
        self._registry_checked = 0.0
        self.observers: list[Callable[[Snapshot], None]] = []
        """Called on the engine thread with each Snapshot (the service's HTTP board and
        inspection files); they must return quickly and keep no reference to engine state."""
        self._inspections: Mapping[str, Inspection] = {}
        self._inspected_round = 0
        self._resume()

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
        self._publish(inspect=True)  # a resumed run shows its last round at once
        while not self.done.is_set():
            try:
                event = self._events.get(timeout=self._wait_s())
            except queue.Empty:
                event = None
            if event is not None:
                if event[0] == "stop":
                    break
                self._handle(event)
            self._check_registry()
            self._advance()

    def _check_registry(self) -> None:
        """At most once a second: if the fleet registry changed, end the links of the
        connected agents it no longer admits (their next registration is refused)."""
        now = time.monotonic()
        if now < self._registry_checked + 1.0:
            return
        self._registry_checked = now
        if not self.admission.reload():
            return
        for agent_id, rec in self.agents.items():
            if not rec.connected:
                continue
            reason = self.admission.refusal(agent_id, rec.cert_sha256)
            if reason is None:
                continue
            log.warning("agent %s removed from the fleet: %s; closing its link", agent_id, reason)
            rec.connected, rec.disconnected_at = False, time.time()
            transport = self.transports.get(rec.transport)
            if transport is not None:
                transport.disconnect(
                    agent_id, pb.ERROR_CODE_PERMISSION_DENIED, f"removed from the fleet: {reason}"
                )

    def _wait_s(self) -> float:
        if self.phase is None:
            return 1.0
        return max(0.01, min(1.0, self.phase.deadline - time.time()))

    def _handle(self, event: tuple[Any, ...]) -> None:
        if event[0] == "disconnect":
            rec = self.agents.get(event[1])
            if rec is not None:
                rec.connected, rec.disconnected_at = False, time.time()
                self._publish()
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
            if env.public_data_request.sha256 not in ("", self.public.info.sha256):
                raise errors.invalid(
                    f"public data {env.public_data_request.sha256[:12]} is not this run's "
                    f"({self.public.info.sha256[:12]})"
                )
            if rec.public_sent >= PUBLIC_SENDS_PER_REGISTRATION:
                raise errors.too_large(
                    f"public set already sent {rec.public_sent} times since {rec.info.agent_id} "
                    "registered: keep the copy (it is checked by its sha256)"
                )
            rec.public_sent += 1
            images, blobs = self._public_encoded
            self._count_tensor(0, down=codec.encoded_bytes(images, blobs))
            return [
                self._message(
                    rec.info.agent_id,
                    0,
                    list(blobs),
                    public_data=pb.PublicData(info=self.public.info, images=images),
                )
            ]
        if kind == "result":
            self._accept(rec, msg)
            return []
        if kind == "metrics":
            return []
        raise errors.invalid(f"agents may not send {kind!r} messages")

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
            info,
            transport,
            device,
            connected=True,
            cert_sha256=identity.cert_sha256 if identity else None,
        )
        self.store.save_agent(agent_id, {**info.__dict__, **device}, transport)
        self._publish()
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
        elif self.phase is not None and agent_id in self.phase.missing:
            replies.append(self.phase.tasks[agent_id])
        return replies

    def _run_config(self) -> pb.RunConfig:
        return pb.RunConfig(
            algorithm=self.cfg.run.algorithm,
            total_rounds=self.cfg.run.rounds,
            completed_rounds=self.completed_rounds,
            public_data=self.public.info,
            params=to_values(self.params),
            chunk_bytes=self.cfg.server.chunk_bytes,
            max_message_bytes=self.cfg.server.max_message_bytes,
            run_uid=self.run_uid,
        )

    def _accept(self, rec: AgentRecord, msg: Message) -> None:
        env = msg.envelope
        phase, res, agent_id = self.phase, env.result, env.agent_id
        if phase is None or env.round != phase.round or res.phase != phase.index:
            where = (
                "no phase is open"
                if phase is None
                else (f"the open phase is round {phase.round} phase {phase.index}")
            )
            raise Rejection(
                pb.ERROR_CODE_FAILED_PRECONDITION,
                f"round {env.round} phase {res.phase} is closed: {where}",
            )
        if agent_id not in phase.tasks:
            raise Rejection(
                pb.ERROR_CODE_FAILED_PRECONDITION,
                f"agent {agent_id} has no task in round {env.round} phase {res.phase}",
            )
        if agent_id in phase.replies:
            raise Rejection(
                pb.ERROR_CODE_ALREADY_EXISTS,
                f"duplicate upload: {agent_id} already answered round {env.round} "
                f"phase {res.phase}",
            )
        action = phase.tasks[agent_id].envelope.task.action
        if res.action != action:
            raise errors.invalid(f"result is for action {res.action!r}, the task was {action!r}")
        tensors = codec.decode_many(res.tensors, msg.blobs, require_finite=True)
        shared = phase.shared.get(agent_id)
        if shared is not None and not phase.direct and shared not in tensors:
            raise errors.invalid(f"{action} reply of {agent_id} lacks shared tensor {shared!r}")
        gathered = self._gathered(phase.tasks[agent_id], tensors.pop(px.GATHERED, None))
        reply = Reply(action, tensors, dict(res.metrics))
        if phase.round <= self.cfg.run.rounds:
            self.strategy.validate(phase.round, phase.index, rec.info, reply)
        phase.replies[agent_id] = reply
        if gathered is not None:
            self._log_gathered(phase, agent_id, gathered)
        phase.busy.extend((b.start_unix, b.end_unix) for b in res.busy)
        self._count_tensor(
            phase.round, up=sum(codec.encoded_bytes(t, msg.blobs) for t in res.tensors)
        )
        if action == FINISH:
            self.store.save_final(agent_id, reply.metrics)
        else:
            self.round_metrics.setdefault(agent_id, {}).update(reply.metrics)

    @staticmethod
    def _gathered(task: Message, mask: np.ndarray | None) -> dict[str, bool] | None:
        """Which agents' tensors a direct gather used, from the reply's mask; Rejection
        where the mask does not fit the task."""
        spec = px.GatherSpec.from_params(from_values(task.envelope.task.params))
        if spec is None:
            if mask is not None:
                raise errors.invalid(f"{px.GATHERED!r} answers a task without a gather")
            return None
        if mask is None or mask.shape != (len(spec.agents),) or not np.isin(mask, (0, 1)).all():
            raise errors.invalid(
                f"a gather reply needs {px.GATHERED!r}: {len(spec.agents)} flags 0 or 1"
            )
        return {a: bool(used) for a, used in zip(spec.agents, mask, strict=True)}

    def _log_gathered(self, phase: Phase, agent_id: str, gathered: dict[str, bool]) -> None:
        missing = [a for a, used in gathered.items() if not used]
        if missing:
            log.warning(
                "round %d phase %d: %s went on without the tensors of %s (missing or unusable)",
                phase.round,
                phase.index,
                agent_id,
                missing,
            )
        metrics = self.round_metrics.setdefault(agent_id, {})
        metrics["peers_gathered"] = float(len(gathered) - len(missing))
        metrics["peers_missing"] = float(len(missing))

    # Round progression.

    def _advance(self) -> None:
        if self.phase is None:
            if self.completed_rounds < self.cfg.run.rounds:
                self._maybe_start_round()
            elif not self.done.is_set():
                self._start_finish()
            return
        phase, now = self.phase, time.time()
        need = max(1, math.ceil(self.cfg.run.quorum * len(phase.tasks)))
        if phase.round > self.cfg.run.rounds:
            need = 0
        gone = all(
            not self.agents[a].connected
            and now - self.agents[a].disconnected_at >= self.cfg.run.disconnect_grace_s
            for a in phase.missing
        )
        if not phase.missing or (len(phase.replies) >= need and (gone or now >= phase.deadline)):
            self._close_phase(phase)
        elif now >= phase.deadline:
            log.warning(
                "round %d phase %d: %d of %d answered by the deadline, quorum is %d; "
                "restarting the round",
                phase.round,
                phase.index,
                len(phase.replies),
                len(phase.tasks),
                need,
            )
            self.phase = None

    def _maybe_start_round(self) -> None:
        eligible = sorted(a for a, r in self.agents.items() if r.connected)
        if len(eligible) < self.cfg.run.min_agents:
            if time.time() - self._waiting_logged >= WAITING_LOG_INTERVAL_S:
                log.info(
                    "waiting for agents: %d of %d connected", len(eligible), self.cfg.run.min_agents
                )
                self._waiting_logged = time.time()
            return
        rnd = self.completed_rounds + 1
        rng = np.random.default_rng([self.cfg.run.seed, rnd])
        k = max(1, math.ceil(self.cfg.run.sample_fraction * len(eligible)))
        chosen = sorted(str(a) for a in rng.choice(eligible, size=k, replace=False))
        self.round_started, self.round_busy, self.round_metrics = time.time(), [], {}
        instructions = self.strategy.begin_round(rnd, [self.agents[a].info for a in chosen])
        self._open_phase(rnd, 0, instructions)

    def _open_phase(
        self,
        rnd: int,
        index: int,
        instructions: Mapping[str, Instruction],
        prev: Phase | None = None,
    ) -> None:
        sel = public_data.selection(
            self.public.num_samples, _round_seed(self.cfg.run.seed, rnd), self.cfg.public.per_round
        )
        now = time.time()
        shared = {a: ins.share for a, ins in instructions.items() if ins.share}
        direct = bool(shared) and self._reach_each_other(instructions)
        exchange = int(np.random.default_rng().integers(1, 2**48)) if direct else 0
        tasks = {
            a: self._task(a, rnd, index, self._routed(ins, prev, direct, exchange), sel)
            for a, ins in instructions.items()
        }
        deadline = now + self.cfg.run.phase_timeout_s
        self.phase = Phase(rnd, index, now, deadline, tasks, shared=shared, direct=direct)
        self.phase.exchange = exchange
        if shared:
            log.info(
                "round %d phase %d: agents exchange %s %s",
                rnd,
                index,
                sorted(set(shared.values())),
                "directly" if direct else "through the coordinator",
            )
        for agent_id, env in tasks.items():
            self._send(agent_id, env)

    def _reach_each_other(self, instructions: Mapping[str, Instruction]) -> bool:
        """Whether the agents of a phase can exchange tensors directly: all on one transport
        with peer exchange, and no other agent connected there (it would get them too)."""
        names = {self.agents[a].transport for a in instructions}
        if len(names) != 1:
            return False
        (name,) = names
        transport = self.transports.get(name)
        if transport is None or not transport.supports_peer_exchange:
            return False
        return not any(
            r.connected and r.transport == name and a not in instructions
            for a, r in self.agents.items()
        )

    def _routed(
        self, ins: Instruction, prev: Phase | None, direct: bool, exchange: int
    ) -> Instruction:
        """`ins` with its share and gather turned into Task params (direct exchange) or its
        gather materialized from the previous phase's replies (mailbox)."""
        params = dict(ins.params)
        tensors = dict(ins.tensors)
        if ins.share and direct:
            params.update({px.SHARE: ins.share, px.EXCHANGE: exchange})
        g = ins.gather
        if g is not None:
            if prev is None:
                raise ValueError(f"gather {g.name!r} in the first phase of a round")
            if prev.direct:
                wrong = [a for a in g.agents if prev.shared.get(a) != g.source]
                if wrong:
                    raise ValueError(f"gather of {g.source!r} from {wrong}, who did not share it")
                wait_s = GATHER_WAIT_SHARE * self.cfg.run.phase_timeout_s
                spec = px.GatherSpec(g.name, g.source, g.agents, prev.exchange, wait_s)
                params.update(spec.params())
            elif g.agents:
                parts = [prev.replies[a].tensors[g.source] for a in g.agents]
                tensors[g.name] = np.concatenate(parts)
        return Instruction(ins.action, tensors, params, ins.wire)

    def _task(
        self, agent_id: str, rnd: int, index: int, ins: Instruction, sel: pb.PublicSelection
    ) -> Message:
        blobs: codec.Blobs = []
        tensors = codec.encode_many(ins.tensors, ins.wire, blobs)
        self._count_tensor(rnd, down=sum(codec.encoded_bytes(t, blobs) for t in tensors))
        task = pb.Task(
            phase=index,
            action=ins.action,
            public=sel,
            params=to_values(ins.params),
            tensors=tensors,
        )
        return self._message(agent_id, rnd, blobs, task=task)

    def _send(self, agent_id: str, msg: Message) -> None:
        rec = self.agents[agent_id]
        transport = self.transports.get(rec.transport)
        if transport is None or not transport.send(agent_id, msg):
            log.info("agent %s unreachable now; its task waits for its reconnect", agent_id)

    def _close_phase(self, phase: Phase) -> None:
        self.phase = None
        self.round_busy.extend(phase.busy)
        if phase.round > self.cfg.run.rounds:
            self._finish(phase)
            return
        late = phase.missing
        if late:
            log.warning("round %d phase %d closed without %s", phase.round, phase.index, late)
        # In agent order, not arrival order: the same seed gives the same sums on any transport.
        replies = dict(sorted(phase.replies.items()))
        nxt = self.strategy.end_phase(phase.round, phase.index, replies)
        if nxt:
            self._open_phase(phase.round, phase.index + 1, nxt, prev=phase)
        else:
            self._complete_round(phase.round)

    def _complete_round(self, rnd: int) -> None:
        end = time.time()
        wall = end - self.round_started
        busy = _union_within(self.round_busy, self.round_started, end)
        accs = [m["test_acc"] for m in self.round_metrics.values() if "test_acc" in m]
        before = [
            m["test_acc_before_distill"]
            for m in self.round_metrics.values()
            if "test_acc_before_distill" in m
        ]
        tensor_up, tensor_down = self.tensor_bytes.get(rnd, [0, 0])
        # Traffic between agents never passes here: each agent reports its own.
        peer = {k: int(sum(m.get(k, 0.0) for m in self.round_metrics.values())) for k in px.METRICS}
        metrics: dict[str, Any] = {
            "round": rnd,
            "participants": len(self.round_metrics),
            "mean_test_acc": float(np.mean(accs)) if accs else None,
            "mean_test_acc_before_distill": float(np.mean(before)) if before else None,
            "bytes_up": self.meter.total(round_=rnd, direction="up") + peer[px.BYTES_UP],
            "bytes_down": self.meter.total(round_=rnd, direction="down") + peer[px.BYTES_DOWN],
            "peer_bytes_up": peer[px.BYTES_UP],
            "peer_bytes_down": peer[px.BYTES_DOWN],
            "tensor_bytes_up": tensor_up + peer[px.TENSOR_BYTES_UP],
            "tensor_bytes_down": tensor_down + peer[px.TENSOR_BYTES_DOWN],
            "wall_s": wall,
            "busy_s": busy,
            "orchestration_s": max(0.0, wall - busy),
            "strategy": self.strategy.summary(),
        }
        self.store.complete_round(
            rnd, metrics, self.strategy.state(), self.round_metrics, self.meter.rows()
        )
        self.completed_rounds = rnd
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
            100 * metrics["orchestration_s"] / wall,
        )

    def _start_finish(self) -> None:
        connected = sorted(a for a, r in self.agents.items() if r.connected)
        finals = self.store.finals()
        todo = [a for a in connected if a not in finals]
        if not todo:
            self._finish(None)
            return
        log.info(
            "all %d rounds done; asking %d agents to export their models",
            self.cfg.run.rounds,
            len(todo),
        )
        rnd = self.cfg.run.rounds + 1
        self.round_started, self.round_busy = time.time(), []
        now = time.time()
        tasks = {a: self._message(a, rnd, task=pb.Task(phase=0, action=FINISH)) for a in todo}
        self.phase = Phase(rnd, 0, now, now + self.cfg.run.finish_timeout_s, tasks)
        for agent_id, env in tasks.items():
            self._send(agent_id, env)

    def _finish(self, phase: Phase | None) -> None:
        if phase is not None and phase.missing:
            log.warning("no final report from %s", phase.missing)
        self.store.set_meta("finished_at", str(time.time()))
        for agent_id, rec in self.agents.items():
            if rec.connected:
                self._send(
                    agent_id,
                    self._message(agent_id, 0, shutdown=pb.Shutdown(reason="run finished")),
                )
        log.info("run %s finished", self.cfg.run.id)
        self.done.set()
        self._publish()

    # Helpers.

    def _publish(self, *, inspect: bool = False) -> None:
        """Hand the observers an immutable Snapshot; with `inspect`, of the strategy's
        matrices after the last completed round too."""
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
            connected=sum(r.connected for r in self.agents.values()),
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
        for agent_id, (info, transport) in self.store.agents().items():
            self.agents[agent_id] = AgentRecord(
                AgentInfo(
                    agent_id,
                    info["architecture"],
                    info["parameter_count"],
                    info["num_train_samples"],
                    info["num_classes"],
                ),
                transport,
                {k: info[k] for k in info if k not in AgentInfo.__dataclass_fields__},
            )
        row = self.store.last_round()
        if row is None:
            return
        self.strategy.load_state(self.store.load_state(row))
        self.meter.load_rows(self.store.byte_rows())
        self.completed_rounds = row.round
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


def _round_seed(seed: int, rnd: int) -> int:
    return int(np.random.default_rng([seed, rnd, 0x5EED]).integers(2**62))


def _union_within(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of spans, clipped to [start, end]."""
    total, cur_a, cur_b = 0.0, None, None
    for a, b in sorted((max(a, start), min(b, end)) for a, b in spans):
        if b <= a:
            continue
        if cur_b is None or a > cur_b:
            if cur_a is not None and cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_a is not None and cur_b is not None:
        total += cur_b - cur_a
    return total

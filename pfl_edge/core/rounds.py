"""The rules of a run's rounds, as a state machine with no socket, thread or clock.

Events go in (`join`, `leave`, `accept`, each with the time it happened); `step(now)`
says what follows from them: tasks to dispatch, a round completed, the run finished.
The coordinator service calls it from its engine thread around real transports and a
store; a simulation calls it around in-process or Ray fleets; tests call it with a
fake clock. The rules live here only:

- sampling: ceil(sample_fraction * connected) agents drawn by rng(seed, round) from the
  connected agents in id order, once `min_agents` are connected;
- each round's public selection from its round seed, the same for all its phases;
- a phase closes when every task is answered, or at its deadline with a quorum
  (ceil(quorum * tasks)), or with a quorum once every missing agent has been gone for
  `disconnect_grace_s`; at the deadline without a quorum the round starts again;
- share/gather routing (pfl_edge.core.routing), direct where the fleet says the
  phase's agents reach each other;
- after the last round, a finish phase asks every connected agent without a final
  report to export its model, within `finish_timeout_s`.

Every operation costs O(1) in the number of agents except where a round or phase
starts or closes (sampling sorts the connected agents once; closing orders the replies).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pfl_edge import errors, public_data
from pfl_edge import peer_exchange as px
from pfl_edge.core import routing
from pfl_edge.core.messages import AgentInfo, Instruction, Reply
from pfl_edge.errors import Rejection
from pfl_edge.v1 import messages_pb2 as pb

log = logging.getLogger("pfl_edge.rounds")

FINISH = "finish"
"""Framework action after the last round: export the model, report final metrics."""

WAITING_LOG_INTERVAL_S = 30.0

GATHER_WAIT_SHARE = 0.25
"""Share of the phase timeout an agent waits for missing peers' tensors of a gather."""


class RoundStrategy(Protocol):
    """What the core asks of an algorithm's coordinator half (coordinator.strategies)."""

    def begin_round(self, round_: int, agents: Sequence[AgentInfo]) -> Mapping[str, Instruction]:
        """Instructions of phase 0 for the agents sampled this round."""

    def end_phase(
        self, round_: int, phase: int, replies: Mapping[str, Reply]
    ) -> Mapping[str, Instruction] | None:
        """The next phase's instructions, or None when the round is done."""

    def validate(self, round_: int, phase: int, agent: AgentInfo, reply: Reply) -> None:
        """Raise Rejection where a reply cannot be used; change nothing."""


@dataclass(frozen=True)
class Rules:
    rounds: int
    min_agents: int
    sample_fraction: float
    quorum: float
    phase_timeout_s: float
    finish_timeout_s: float
    disconnect_grace_s: float
    seed: int
    public_samples: int
    """Size of the public set the round's selection draws from (0: none)."""
    public_per_round: int


@dataclass(frozen=True)
class Dispatch:
    """Send `instruction` to `agent_id` as the task of round `round`, phase `phase`."""

    agent_id: str
    round: int
    phase: int
    instruction: Instruction
    public: pb.PublicSelection


@dataclass(frozen=True)
class RoundDone:
    round: int
    participants: Mapping[str, Mapping[str, float]]
    """Metrics each agent reported this round (merged over its replies)."""
    wall_s: float
    """From the round's first task to its last phase's close."""
    busy_s: float
    """Union of the agents' busy spans within the round."""
    critical_s: float
    """Sum over phases of the busiest agent's compute in that phase: the round's length
    had the coordinator, the links and the gaps between phases cost nothing."""


@dataclass(frozen=True)
class Finished:
    missing: tuple[str, ...]
    """Connected agents that sent no final report in time."""


Event = Dispatch | RoundDone | Finished


@dataclass
class Phase:
    round: int
    index: int
    started: float
    deadline: float
    tasks: dict[str, Dispatch]
    pending: set[str]
    """Agents of `tasks` that have not answered."""
    pending_connected: int
    """How many of `pending` are connected now."""
    last_left: float = 0.0
    """Latest time a pending agent disconnected (an upper bound once some came back)."""
    replies: dict[str, Reply] = field(default_factory=dict)
    busy: dict[str, float] = field(default_factory=dict)
    """Seconds of compute each agent reported for this phase."""
    spans: list[tuple[float, float]] = field(default_factory=list)
    shared: dict[str, str] = field(default_factory=dict)
    """Agent -> name of the reply tensor its instruction shares (`Instruction.share`)."""
    direct: bool = False
    """The shared tensors go agent to agent (the replies lack them), not through here."""
    exchange: int = 0
    """Id of this phase's direct exchange (peer messages carry it)."""

    @property
    def missing(self) -> list[str]:
        """The agents that have not answered, in id order (for logs; O(pending))."""
        return sorted(self.pending)


@dataclass
class _Agent:
    info: AgentInfo
    route: str
    """The fleet's name for how this agent is reached (a transport's name)."""
    connected: bool = False
    left_at: float = 0.0


class RoundCore:
    """One run's round state. Not thread-safe: one owner calls it (the engine thread)."""

    def __init__(
        self,
        rules: Rules,
        strategy: RoundStrategy,
        *,
        reach: Callable[[Collection[str]], bool] = lambda _agents: False,
        salt: int = 0,
        completed_rounds: int = 0,
        finals: Iterable[str] = (),
    ) -> None:
        """`reach(agents)` says whether those agents can exchange tensors directly (the
        fleet's capability); `salt` makes exchange ids differ between processes of one
        run; `completed_rounds` and `finals` restore a resumed run."""
        self.rules = rules
        self.strategy = strategy
        self._reach = reach
        self._salt = salt
        self.agents: dict[str, _Agent] = {}
        self.connected: set[str] = set()
        self.completed_rounds = completed_rounds
        self.finals: set[str] = set(finals)
        self.phase: Phase | None = None
        self.done = False
        self.round_metrics: dict[str, dict[str, float]] = {}
        self._round_started = 0.0
        self._round_spans: list[tuple[float, float]] = []
        self._round_critical = 0.0
        self._attempts = 0
        self._waiting_logged = -math.inf

    # Events in.

    def restore_agent(self, info: AgentInfo, route: str) -> None:
        """A registration from before a restart: known, not connected."""
        self.agents[info.agent_id] = _Agent(info, route)

    def join(self, info: AgentInfo, route: str, now: float) -> Dispatch | None:
        """An agent (re)registered over `route`; its open task, if it has one, to resend."""
        agent_id = info.agent_id
        rec = self.agents.get(agent_id)
        was_connected = rec is not None and rec.connected
        self.agents[agent_id] = _Agent(info, route, connected=True)
        self.connected.add(agent_id)
        phase = self.phase
        if phase is None or agent_id not in phase.pending:
            return None
        if not was_connected:
            phase.pending_connected += 1
        return phase.tasks[agent_id]

    def leave(self, agent_id: str, now: float) -> None:
        rec = self.agents.get(agent_id)
        if rec is None or not rec.connected:
            return
        rec.connected, rec.left_at = False, now
        self.connected.discard(agent_id)
        phase = self.phase
        if phase is not None and agent_id in phase.pending:
            phase.pending_connected -= 1
            phase.last_left = max(phase.last_left, now)

    def check(self, agent_id: str, round_: int, phase_index: int, action: str) -> Dispatch:
        """The task an answer of `agent_id` to round `round_` phase `phase_index` with
        `action` would answer; Rejection where the phase is not open, the agent has no task
        in it or answered already, or the task was another action. Cheap: the engine asks
        before decoding a payload."""
        phase = self.phase
        if phase is None or round_ != phase.round or phase_index != phase.index:
            where = (
                "no phase is open"
                if phase is None
                else f"the open phase is round {phase.round} phase {phase.index}"
            )
            raise Rejection(
                pb.ERROR_CODE_FAILED_PRECONDITION,
                f"round {round_} phase {phase_index} is closed: {where}",
            )
        task = phase.tasks.get(agent_id)
        if task is None:
            raise Rejection(
                pb.ERROR_CODE_FAILED_PRECONDITION,
                f"agent {agent_id} has no task in round {round_} phase {phase_index}",
            )
        if agent_id not in phase.pending:
            raise Rejection(
                pb.ERROR_CODE_ALREADY_EXISTS,
                f"duplicate upload: {agent_id} already answered round {round_} phase {phase_index}",
            )
        if task.instruction.action != action:
            raise errors.invalid(
                f"result is for action {action!r}, the task was {task.instruction.action!r}"
            )
        return task

    def accept(
        self,
        agent_id: str,
        round_: int,
        phase_index: int,
        reply: Reply,
        busy: Sequence[tuple[float, float]] = (),
    ) -> None:
        """Take an agent's answer to its task; Rejection (and nothing changed) where the
        phase is not open, the agent has no task in it or answered already, or the reply
        does not fit its task or the strategy. A direct gather's mask rides in
        `reply.tensors[px.GATHERED]` and is taken out here."""
        phase = self.phase
        task = self.check(agent_id, round_, phase_index, reply.action)
        assert phase is not None
        action = task.instruction.action
        tensors = dict(reply.tensors)
        shared = phase.shared.get(agent_id)
        if shared is not None and not phase.direct and shared not in tensors:
            raise errors.invalid(f"{action} reply of {agent_id} lacks shared tensor {shared!r}")
        used = routing.gathered(task.instruction.params, tensors.pop(px.GATHERED, None))
        reply = Reply(reply.action, tensors, dict(reply.metrics))
        if action != FINISH:
            self.strategy.validate(round_, phase_index, self.agents[agent_id].info, reply)
        phase.replies[agent_id] = reply
        phase.pending.discard(agent_id)
        if self.agents[agent_id].connected:
            phase.pending_connected -= 1
        phase.spans.extend(busy)
        phase.busy[agent_id] = phase.busy.get(agent_id, 0.0) + sum(b - a for a, b in busy)
        if action == FINISH:
            self.finals.add(agent_id)
            return
        metrics = self.round_metrics.setdefault(agent_id, {})
        metrics.update(reply.metrics)
        if used is not None:
            missing = [a for a, ok in used.items() if not ok]
            if missing:
                log.warning(
                    "round %d phase %d: %s went on without the tensors of %s (missing or unusable)",
                    round_,
                    phase_index,
                    agent_id,
                    missing,
                )
            metrics["peers_gathered"] = float(len(used) - len(missing))
            metrics["peers_missing"] = float(len(missing))

    # What follows.

    def wakeup(self) -> float | None:
        """When `step` must run again though no event came (None: only after an event)."""
        phase = self.phase
        if phase is None:
            return None
        if phase.pending and phase.pending_connected == 0:
            return min(phase.deadline, phase.last_left + self.rules.disconnect_grace_s)
        return phase.deadline

    def step(self, now: float) -> list[Event]:
        """The next transition the events so far allow, as the events it makes (empty:
        nothing to do until the next event or `wakeup`). One round's completion is its
        own step, so its owner can persist the strategy's state before the next round
        begins: call step until it returns nothing."""
        if self.done:
            return []
        phase = self.phase
        if phase is None:
            if self.completed_rounds < self.rules.rounds:
                return self._start_round(now)
            return self._start_finish(now)
        finish = phase.round > self.rules.rounds
        need = 0 if finish else max(1, math.ceil(self.rules.quorum * len(phase.tasks)))
        gone = (
            phase.pending_connected == 0 and now - phase.last_left >= self.rules.disconnect_grace_s
        )
        if not phase.pending or (len(phase.replies) >= need and (gone or now >= phase.deadline)):
            return self._close_phase(phase, now)
        if now >= phase.deadline:
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
            return self.step(now)
        return []

    def _start_round(self, now: float) -> list[Event]:
        if len(self.connected) < self.rules.min_agents:
            if now - self._waiting_logged >= WAITING_LOG_INTERVAL_S:
                log.info(
                    "waiting for agents: %d of %d connected",
                    len(self.connected),
                    self.rules.min_agents,
                )
                self._waiting_logged = now
            return []
        rnd = self.completed_rounds + 1
        chosen = sample(self.rules.seed, rnd, sorted(self.connected), self.rules.sample_fraction)
        self._round_started, self._round_spans, self._round_critical = now, [], 0.0
        self.round_metrics = {}
        instructions = self.strategy.begin_round(rnd, [self.agents[a].info for a in chosen])
        return self._open_phase(rnd, 0, instructions, None, now)

    def _open_phase(
        self,
        rnd: int,
        index: int,
        instructions: Mapping[str, Instruction],
        prev: Phase | None,
        now: float,
    ) -> list[Event]:
        sel = public_data.selection(
            self.rules.public_samples,
            round_seed(self.rules.seed, rnd),
            self.rules.public_per_round,
        )
        shared = {a: ins.share for a, ins in instructions.items() if ins.share}
        direct = bool(shared) and self._reach(list(instructions))
        self._attempts += 1
        exchange = (
            int(np.random.default_rng([self._salt, self._attempts]).integers(1, 2**48))
            if direct
            else 0
        )
        wait_s = GATHER_WAIT_SHARE * self.rules.phase_timeout_s
        tasks = {
            a: Dispatch(
                a,
                rnd,
                index,
                routing.routed(
                    ins,
                    direct=direct,
                    exchange=exchange,
                    prev_direct=prev is not None and prev.direct,
                    prev_shared=prev.shared if prev is not None else {},
                    prev_exchange=prev.exchange if prev is not None else 0,
                    prev_replies=prev.replies if prev is not None else None,
                    wait_s=wait_s,
                ),
                sel,
            )
            for a, ins in instructions.items()
        }
        if shared:
            log.info(
                "round %d phase %d: agents exchange %s %s",
                rnd,
                index,
                sorted(set(shared.values())),
                "directly" if direct else "through the coordinator",
            )
        return self._open(
            rnd, index, tasks, now + self.rules.phase_timeout_s, now, shared, direct, exchange
        )

    def _open(
        self,
        rnd: int,
        index: int,
        tasks: dict[str, Dispatch],
        deadline: float,
        now: float,
        shared: dict[str, str] | None = None,
        direct: bool = False,
        exchange: int = 0,
    ) -> list[Event]:
        pending = set(tasks)
        self.phase = Phase(
            rnd,
            index,
            now,
            deadline,
            tasks,
            pending,
            pending_connected=len(pending & self.connected),
            last_left=max((self.agents[a].left_at for a in pending - self.connected), default=0.0),
            shared=shared or {},
            direct=direct,
            exchange=exchange,
        )
        return list(tasks.values())

    def _close_phase(self, phase: Phase, now: float) -> list[Event]:
        self.phase = None
        self._round_spans.extend(phase.spans)
        self._round_critical += max(phase.busy.values(), default=0.0)
        if phase.round > self.rules.rounds:
            return self._finish(phase)
        if phase.pending:
            log.warning(
                "round %d phase %d closed without %s", phase.round, phase.index, phase.missing
            )
        # In agent order, not arrival order: the same seed gives the same sums on any fleet.
        replies = dict(sorted(phase.replies.items()))
        nxt = self.strategy.end_phase(phase.round, phase.index, replies)
        if nxt:
            return self._open_phase(phase.round, phase.index + 1, nxt, phase, now)
        self.completed_rounds = phase.round
        return [
            RoundDone(
                phase.round,
                self.round_metrics,
                wall_s=now - self._round_started,
                busy_s=union_within(self._round_spans, self._round_started, now),
                critical_s=self._round_critical,
            )
        ]

    def _start_finish(self, now: float) -> list[Event]:
        todo = sorted(self.connected - self.finals)
        if not todo:
            return self._finish(None)
        log.info(
            "all %d rounds done; asking %d agents to export their models",
            self.rules.rounds,
            len(todo),
        )
        rnd = self.rules.rounds + 1
        self._round_started, self._round_spans, self._round_critical = now, [], 0.0
        tasks = {a: Dispatch(a, rnd, 0, Instruction(FINISH), pb.PublicSelection()) for a in todo}
        return self._open(rnd, 0, tasks, now + self.rules.finish_timeout_s, now)

    def _finish(self, phase: Phase | None) -> list[Event]:
        missing = tuple(phase.missing) if phase is not None else ()
        if missing:
            log.warning("no final report from %s", list(missing))
        self.done = True
        return [Finished(missing)]


def round_seed(seed: int, rnd: int) -> int:
    """The seed of round `rnd`'s public selection."""
    return int(np.random.default_rng([seed, rnd, 0x5EED]).integers(2**62))


def sample(seed: int, rnd: int, agent_ids: Sequence[str], fraction: float) -> list[str]:
    """ceil(fraction * n) of `agent_ids` (sorted) drawn by rng(seed, round), in id order."""
    rng = np.random.default_rng([seed, rnd])
    k = max(1, math.ceil(fraction * len(agent_ids)))
    if k >= len(agent_ids):
        return list(agent_ids)
    return sorted(str(a) for a in rng.choice(agent_ids, size=k, replace=False))


def union_within(spans: Iterable[tuple[float, float]], start: float, end: float) -> float:
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

"""The round core's rules with a fake clock and no sockets: deadlines with and without a
quorum, agents vanishing mid-phase, duplicate replies, resume, share/gather routing."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pytest

from pfl_edge import peer_exchange as px
from pfl_edge.core.messages import AgentInfo, Gather, Instruction, Reply
from pfl_edge.core.rounds import (
    FINISH,
    Dispatch,
    Event,
    Finished,
    RoundCore,
    RoundDone,
    Rules,
    sample,
)
from pfl_edge.errors import Rejection
from pfl_edge.v1 import messages_pb2 as pb

RULES = Rules(
    rounds=2,
    min_agents=3,
    sample_fraction=1.0,
    quorum=0.5,
    phase_timeout_s=60.0,
    finish_timeout_s=30.0,
    disconnect_grace_s=10.0,
    seed=7,
    public_samples=100,
    public_per_round=10,
)


class OnePhase:
    """Every agent trains once per round; the strategy records what it was given."""

    def __init__(self) -> None:
        self.closed: list[tuple[int, int, list[str]]] = []
        self.begun: list[tuple[int, list[str]]] = []

    def begin_round(self, round_: int, agents: Sequence[AgentInfo]) -> dict[str, Instruction]:
        self.begun.append((round_, [a.agent_id for a in agents]))
        return {a.agent_id: Instruction("train", params={"round": round_}) for a in agents}

    def end_phase(
        self, round_: int, phase: int, replies: Mapping[str, Reply]
    ) -> dict[str, Instruction] | None:
        self.closed.append((round_, phase, list(replies)))
        return None

    def validate(self, round_: int, phase: int, agent: AgentInfo, reply: Reply) -> None:
        if "bad" in reply.tensors:
            raise Rejection(pb.ERROR_CODE_INVALID_ARGUMENT, "bad tensor")


class ShareGather(OnePhase):
    """Phase 0 shares tensor "out"; phase 1 gathers everyone else's as "peers"."""

    def begin_round(self, round_: int, agents: Sequence[AgentInfo]) -> dict[str, Instruction]:
        self.begun.append((round_, [a.agent_id for a in agents]))
        return {a.agent_id: Instruction("predict", share="out") for a in agents}

    def end_phase(
        self, round_: int, phase: int, replies: Mapping[str, Reply]
    ) -> dict[str, Instruction] | None:
        self.closed.append((round_, phase, list(replies)))
        if phase == 1:
            return None
        ids = list(replies)
        return {
            a: Instruction("learn", gather=Gather("peers", "out", tuple(b for b in ids if b != a)))
            for a in ids
        }


def info(agent_id: str) -> AgentInfo:
    return AgentInfo(agent_id, "lenet5", 100, 50, 10, (1, 8, 8))


def dispatches(events: list[Event]) -> dict[str, Dispatch]:
    return {e.agent_id: e for e in events if isinstance(e, Dispatch)}


def joined(core: RoundCore, ids: Collection[str], now: float = 0.0) -> None:
    for a in ids:
        assert core.join(info(a), "grpc", now) is None


def answer(core: RoundCore, d: Dispatch, now: float, **tensors: np.ndarray) -> None:
    reply = Reply(d.instruction.action, dict(tensors), {"test_acc": 0.5})
    core.accept(d.agent_id, d.round, d.phase, reply, [(now - 1.0, now)])


def test_waits_for_min_agents_then_samples_and_closes_when_all_answer() -> None:
    strategy = OnePhase()
    core = RoundCore(RULES, strategy)
    joined(core, ["a", "b"])
    assert core.step(0.0) == []  # 2 of 3
    joined(core, ["c"])
    tasks = dispatches(core.step(1.0))
    assert sorted(tasks) == ["a", "b", "c"]
    assert {d.round for d in tasks.values()} == {1}
    sel = tasks["a"].public
    assert sel.count == RULES.public_per_round and all(d.public == sel for d in tasks.values())
    for now, d in zip((2.0, 3.0, 4.0), tasks.values(), strict=True):
        answer(core, d, now)
    (done,) = core.step(4.0)
    assert isinstance(done, RoundDone) and done.round == 1
    assert done.wall_s == pytest.approx(3.0)
    assert done.critical_s == pytest.approx(1.0)  # the busiest agent's 1 s
    assert sorted(done.participants) == ["a", "b", "c"]
    # No idle gap: round 2 starts in the very next step, at the same instant.
    round2 = dispatches(core.step(4.0))
    assert sorted(round2) == ["a", "b", "c"] and round2["a"].public.seed != sel.seed
    assert core.wakeup() == 4.0 + RULES.phase_timeout_s


def test_deadline_with_a_quorum_closes_without_the_late_agent() -> None:
    strategy = OnePhase()
    core = RoundCore(RULES, strategy)
    joined(core, ["a", "b", "c"])
    tasks = dispatches(core.step(0.0))
    answer(core, tasks["a"], 1.0)
    answer(core, tasks["b"], 2.0)
    assert core.step(59.0) == []
    (done,) = core.step(60.0)
    assert isinstance(done, RoundDone)
    assert strategy.closed == [(1, 0, ["a", "b"])]
    # The late answer is refused: its phase closed.
    with pytest.raises(Rejection) as err:
        answer(core, tasks["c"], 61.0)
    assert err.value.code == pb.ERROR_CODE_FAILED_PRECONDITION


def test_deadline_without_a_quorum_restarts_the_round() -> None:
    strategy = OnePhase()
    core = RoundCore(RULES, strategy)
    joined(core, ["a", "b", "c"])
    tasks = dispatches(core.step(0.0))
    answer(core, tasks["a"], 1.0)  # 1 of 3, quorum is 2
    again = dispatches(core.step(60.0))
    assert sorted(again) == ["a", "b", "c"] and {d.round for d in again.values()} == {1}
    assert strategy.closed == [] and core.completed_rounds == 0
    assert strategy.begun == [(1, ["a", "b", "c"]), (1, ["a", "b", "c"])]


def test_an_agent_vanishing_mid_phase_is_waited_for_only_its_grace() -> None:
    core = RoundCore(RULES, OnePhase())
    joined(core, ["a", "b", "c"])
    tasks = dispatches(core.step(0.0))
    answer(core, tasks["a"], 1.0)
    answer(core, tasks["b"], 2.0)
    core.leave("c", 5.0)
    assert core.wakeup() == 5.0 + RULES.disconnect_grace_s
    assert core.step(14.0) == []
    (done,) = core.step(15.0)
    assert isinstance(done, RoundDone) and sorted(done.participants) == ["a", "b"]


def test_a_vanished_agent_that_returns_gets_its_task_again_and_is_waited_for() -> None:
    core = RoundCore(RULES, OnePhase())
    joined(core, ["a", "b", "c"])
    tasks = dispatches(core.step(0.0))
    answer(core, tasks["a"], 1.0)
    answer(core, tasks["b"], 2.0)
    core.leave("c", 3.0)
    resent = core.join(info("c"), "grpc", 4.0)
    assert resent is tasks["c"]
    assert core.step(20.0) == []  # past the grace, but c is back: wait for it
    answer(core, tasks["c"], 21.0)
    (done,) = core.step(21.0)
    assert isinstance(done, RoundDone) and sorted(done.participants) == ["a", "b", "c"]


def test_a_duplicate_or_refused_reply_changes_nothing() -> None:
    core = RoundCore(RULES, OnePhase())
    joined(core, ["a", "b", "c"])
    tasks = dispatches(core.step(0.0))
    answer(core, tasks["a"], 1.0)
    phase = core.phase
    assert phase is not None
    before = (dict(phase.replies), set(phase.pending), phase.pending_connected, dict(phase.busy))
    with pytest.raises(Rejection) as err:
        answer(core, tasks["a"], 2.0)
    assert err.value.code == pb.ERROR_CODE_ALREADY_EXISTS
    with pytest.raises(Rejection) as err:
        answer(core, tasks["b"], 2.0, bad=np.zeros(1))
    assert err.value.code == pb.ERROR_CODE_INVALID_ARGUMENT
    with pytest.raises(Rejection):
        core.accept("b", 1, 0, Reply("predict", {}, {}))  # not the task's action
    with pytest.raises(Rejection):
        core.accept("zz", 1, 0, Reply("train", {}, {}))  # no task
    after = (dict(phase.replies), set(phase.pending), phase.pending_connected, dict(phase.busy))
    assert after == before


def test_resume_starts_at_the_next_round_and_finishes_only_who_has_no_final() -> None:
    strategy = OnePhase()
    core = RoundCore(RULES, strategy, completed_rounds=1, finals=["a"])
    for a in ("a", "b", "c"):
        core.restore_agent(info(a), "grpc")
    assert core.step(0.0) == []  # known, none connected
    joined(core, ["a", "b", "c"])
    tasks = dispatches(core.step(1.0))
    assert {d.round for d in tasks.values()} == {2}
    for d in tasks.values():
        answer(core, d, 2.0)
    assert isinstance(core.step(2.0)[0], RoundDone)
    finish = dispatches(core.step(2.0))
    assert sorted(finish) == ["b", "c"]
    assert {d.instruction.action for d in finish.values()} == {FINISH}
    answer(core, finish["b"], 3.0)
    core.leave("c", 4.0)
    assert core.step(13.0) == []
    (end,) = core.step(14.0)
    assert end == Finished(("c",)) and core.done and core.finals == {"a", "b"}


def test_share_and_gather_through_the_coordinator() -> None:
    core = RoundCore(RULES, ShareGather())  # reach() says no: mailbox
    joined(core, ["a", "b", "c"])
    tasks = dispatches(core.step(0.0))
    assert px.SHARE not in tasks["a"].instruction.params
    with pytest.raises(Rejection, match="lacks shared tensor"):
        answer(core, tasks["a"], 1.0)
    outs = {a: np.full((2, 3), i, np.float32) for i, a in enumerate("abc")}
    for a, d in tasks.items():
        answer(core, d, 1.0, out=outs[a])
    learn = dispatches(core.step(1.0))
    np.testing.assert_array_equal(
        learn["a"].instruction.tensors["peers"], np.concatenate([outs["b"], outs["c"]])
    )
    assert px.GATHER not in learn["a"].instruction.params
    with pytest.raises(Rejection, match="without a gather"):
        answer(core, learn["a"], 2.0, **{px.GATHERED: np.ones(2, np.uint8)})
    for d in learn.values():
        answer(core, d, 2.0)
    assert isinstance(core.step(2.0)[0], RoundDone)


def test_share_and_gather_directly_where_the_fleet_reaches_each_other() -> None:
    asked: list[list[str]] = []

    def reach(agents: Collection[str]) -> bool:
        asked.append(sorted(agents))
        return True

    core = RoundCore(RULES, ShareGather(), reach=reach, salt=3)
    joined(core, ["a", "b", "c"])
    tasks = dispatches(core.step(0.0))
    assert asked == [["a", "b", "c"]]
    params = tasks["a"].instruction.params
    assert params[px.SHARE] == "out"
    exchange = params[px.EXCHANGE]
    for d in tasks.values():
        answer(core, d, 1.0)  # the shared tensor went to the peers, not here
    learn = dispatches(core.step(1.0))
    spec = px.GatherSpec.from_params(learn["a"].instruction.params)
    assert spec is not None
    assert (spec.source, spec.agents, spec.exchange) == ("out", ("b", "c"), exchange)
    assert "peers" not in learn["a"].instruction.tensors
    with pytest.raises(Rejection, match="needs"):
        answer(core, learn["a"], 2.0)  # no mask of which peers it used
    answer(core, learn["a"], 2.0, **{px.GATHERED: np.array([1, 0], np.uint8)})
    phase = core.phase
    assert phase is not None and px.GATHERED not in phase.replies["a"].tensors
    assert core.round_metrics["a"]["peers_missing"] == 1.0


def test_exchange_ids_differ_when_a_round_restarts() -> None:
    core = RoundCore(RULES, ShareGather(), reach=lambda _a: True, salt=3)
    joined(core, ["a", "b", "c"])
    first = dispatches(core.step(0.0))["a"].instruction.params[px.EXCHANGE]
    second = dispatches(core.step(60.0))["a"].instruction.params[px.EXCHANGE]
    assert first != second


def test_sampling_is_seeded_and_takes_ceil_of_the_fraction() -> None:
    ids = [f"a{i:02d}" for i in range(10)]
    picked = sample(7, 1, ids, 0.25)
    assert len(picked) == 3 and picked == sorted(picked) and set(picked) <= set(ids)
    assert sample(7, 1, ids, 0.25) == picked
    assert sample(7, 2, ids, 0.25) != picked or sample(7, 3, ids, 0.25) != picked
    assert sample(7, 1, ids, 1.0) == ids

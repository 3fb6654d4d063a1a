"""A registered agent whose message the coordinator refuses does not stop. A real
edge_agent.runtime.Agent (in a thread, tiny data) and a scripted agent take part in a
2-round run over gRPC on loopback; the real one answers round 1 only after the
coordinator closed it without it (the scripted agent made the quorum), gets its late
result refused, reconnects, registers again and is counted in round 2 and the finish."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from edge_agent.runtime import Agent
from pfl_edge.framing import Message
from tests.agent_threads import SHAPE, WAIT_S, config, options, start, wait_until
from tests.harness import ScriptedAgent, running_coordinator

pytestmark = pytest.mark.timeout(90)

PHASE_TIMEOUT_S = 8.0
"""Round 1 waits this long for the late agent; round 2 gives it this long to come back."""


def test_agent_reconnects_after_a_refused_result_and_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cfg = config(tmp_path, algorithm="local", min_agents=2, phase_timeout_s=PHASE_TIMEOUT_S)
    with running_coordinator(cfg) as coord:
        agent = Agent(options(tmp_path, coord.target, "a"))
        answer = agent._task

        def late_in_round_1(msg: Message) -> None:
            if msg.envelope.round == 1:  # answer once round 1 closed without this agent
                wait_until(lambda: coord.engine.completed_rounds >= 1, "round 1 to close")
            answer(msg)

        agent._task = late_in_round_1  # type: ignore[method-assign]
        outcome: dict[str, Any] = {}
        thread = start(agent, outcome)
        other = ScriptedAgent(coord.target, "b")
        try:
            other.register(input_shape=SHAPE)
            for _ in range(cfg.run.rounds):
                other.answer(other.expect("task", WAIT_S), metrics={"test_acc": 0.5})
            finish = other.expect("task", WAIT_S)
            assert finish.task.action == "finish"
            other.answer(finish, metrics={"final_test_acc": 0.5, "onnx_max_abs_diff": 1e-7})
            other.expect("shutdown", WAIT_S)
        finally:
            other.close()
        thread.join(WAIT_S)
        assert not thread.is_alive(), "the agent did not finish"
        rounds = coord.store.rounds()
        finals = coord.store.finals()

    assert "error" not in outcome, outcome.get("error")
    assert "final_test_acc" in outcome["final"]
    refused = [
        r.getMessage()
        for r in caplog.records
        if r.name == "pfl_edge.agent" and r.getMessage().startswith("coordinator refused")
    ]
    assert len(refused) == 1 and "round 1 phase 0 is closed" in refused[0], refused
    assert refused[0].endswith("; reconnecting")
    assert "agent a reconnected" in caplog.text  # the second registration
    assert agent.refusals == 0  # reset by the next task answered
    assert [r.round for r in rounds] == [1, 2]
    assert [r.metrics["participants"] for r in rounds] == [1, 2]  # a counted after the refusal
    assert sorted(finals) == ["a", "b"]

"""A registered agent whose message the coordinator refuses does not stop. A real
edge_agent.runtime.Agent (in a thread, tiny data) and a scripted agent take part in a
2-round run over gRPC on loopback; the real one answers round 1 only after the
coordinator closed it without it (the scripted agent made the quorum), gets its late
result refused, reconnects, registers again and is counted in round 2 and the finish."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.runtime import Agent, AgentOptions
from pfl_edge.data._npz import save_npz_atomic
from pfl_edge.framing import Message
from tests.harness import NUM_CLASSES, ScriptedAgent, make_config, running_coordinator

pytestmark = pytest.mark.timeout(90)

SHAPE = (1, 16, 16)
"""The smallest images the model zoo takes."""
PHASE_TIMEOUT_S = 8.0
"""Round 1 waits this long for the late agent; round 2 gives it this long to come back."""
WAIT_S = 60.0


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def write_private(path: Path) -> Path:
    rng = np.random.default_rng(1)
    save_npz_atomic(
        path,
        {
            "x_train": images(32, 2),
            "y_train": rng.integers(0, NUM_CLASSES, 32).astype(np.int64),
            "x_test": images(8, 3),
            "y_test": rng.integers(0, NUM_CLASSES, 8).astype(np.int64),
        },
    )
    return path


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(0.05)


def test_agent_reconnects_after_a_refused_result_and_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cfg = make_config(tmp_path, algorithm="local", min_agents=2, phase_timeout_s=PHASE_TIMEOUT_S)
    public = tmp_path / "public16.npz"
    np.savez(public, x=images(cfg.public.samples, 0))
    cfg = replace(cfg, public=replace(cfg.public, dataset=str(public)))
    with running_coordinator(cfg) as coord:
        agent = Agent(
            AgentOptions(
                agent_id="a",
                coordinator=f"grpc://{coord.target}",
                model="lenet5",
                data=write_private(tmp_path / "a.npz"),
                out_dir=tmp_path / "a",
                cache_dir=tmp_path / "cache",
                num_classes=NUM_CLASSES,
            )
        )
        answer = agent._task

        def late_in_round_1(msg: Message) -> None:
            if msg.envelope.round == 1:  # answer once round 1 closed without this agent
                wait_until(lambda: coord.engine.completed_rounds >= 1, "round 1 to close")
            answer(msg)

        agent._task = late_in_round_1  # type: ignore[method-assign]
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["final"] = agent.run()
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=run, name="agent-a", daemon=True)
        thread.start()
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

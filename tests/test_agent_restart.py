"""A real agent that dies in the middle of a run and is started again goes on from the
state it saved after its last round, not from fresh weights: 2 rounds of `local` over
gRPC on loopback; the first process "dies" (its stream closed, its thread ended) on
receiving round 2, a new Agent with the same --out takes round 2 and the finish."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from edge_agent import checkpoint
from edge_agent.checkpoint import SaveState
from edge_agent.runtime import Agent
from pfl_edge.framing import Message
from tests.agent_threads import WAIT_S, config, options, start
from tests.harness import running_coordinator

pytestmark = pytest.mark.timeout(90)


class Crash(Exception):
    """Stands for the agent process dying."""


def params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().flatten().float() for t in model.state_dict().values()])


@pytest.mark.parametrize("save_state", ["full", "model"])
def test_restarted_agent_resumes_from_its_saved_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, save_state: SaveState
) -> None:
    caplog.set_level(logging.INFO)
    cfg = config(tmp_path, algorithm="local", min_agents=1)
    with running_coordinator(cfg) as coord:
        opts = replace(
            options(tmp_path, coord.target, "a", model="resnet_small"), save_state=save_state
        )
        first = Agent(opts)
        answer = first._task
        at_death: dict[str, torch.Tensor] = {}

        def dies_on_round_2(msg: Message) -> None:
            if msg.envelope.round == 2:
                at_death["params"] = params(first.model)
                assert first.transport is not None
                first.transport.close()
                raise Crash
            answer(msg)

        first._task = dies_on_round_2  # type: ignore[method-assign]
        died: dict[str, Any] = {}
        start(first, died).join(WAIT_S)
        assert isinstance(died.get("error"), Crash), died

        second = Agent(replace(opts))
        assert not torch.equal(params(second.model), at_death["params"])  # fresh weights
        make_learner = second._make_learner
        restored: dict[str, torch.Tensor] = {}

        def remember_restored() -> None:
            make_learner()
            if second.learner is not None and "params" not in restored:
                restored["params"] = params(second.model)

        second._make_learner = remember_restored  # type: ignore[method-assign]
        outcome: dict[str, Any] = {}
        thread = start(second, outcome)
        thread.join(WAIT_S)
        assert not thread.is_alive(), "the restarted agent did not finish"
        run_uid = coord.store.run_uid()
        rounds = coord.store.rounds()

    assert "error" not in outcome, outcome.get("error")
    assert "final_test_acc" in outcome["final"]
    assert "resumed from the state saved after round 1" in caplog.text
    torch.testing.assert_close(restored["params"], at_death["params"], rtol=0, atol=0)
    assert [r.round for r in rounds] == [1, 2]
    saved = torch.load(opts.out_dir / checkpoint.FILE_NAME, weights_only=True)
    assert (saved["round"], saved["run_uid"], saved["agent_id"]) == (2, run_uid, "a")
    assert (saved["optimizers"] is None) == (save_state == "model")


def test_an_agent_with_saving_off_writes_no_state(tmp_path: Path) -> None:
    cfg = config(tmp_path, algorithm="local", min_agents=1)
    with running_coordinator(cfg) as coord:
        opts = replace(options(tmp_path, coord.target, "a"), save_state="off")
        outcome: dict[str, Any] = {}
        start(Agent(opts), outcome).join(WAIT_S)
        rounds = coord.store.rounds()
    assert "error" not in outcome, outcome.get("error")
    assert [r.round for r in rounds] == [1, 2]
    assert (opts.out_dir / "model.onnx").exists()
    assert not (opts.out_dir / checkpoint.FILE_NAME).exists()

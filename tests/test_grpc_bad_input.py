"""Bad input over a real gRPC connection: each message is refused with a clear status,
the coordinator keeps serving, and the run's state does not change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pfl_edge import codec
from pfl_edge.v1 import messages_pb2 as pb
from tests.harness import (
    Coordinator,
    ScriptedAgent,
    make_config,
    running_coordinator,
    soft_predictions,
    stored_agents,
)

PER_ROUND = 50


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Coordinator]:
    with running_coordinator(make_config(tmp_path, min_agents=2)) as c:
        yield c


def joined(coord: Coordinator, agent_id: str) -> tuple[ScriptedAgent, pb.Envelope | None]:
    agent = ScriptedAgent(coord.target, agent_id)
    agent.register()
    return agent, None


def start_round(
    coord: Coordinator,
) -> tuple[ScriptedAgent, pb.Envelope, ScriptedAgent, pb.Envelope]:
    a, _ = joined(coord, "a")
    b, _ = joined(coord, "b")
    return a, a.expect("task"), b, b.expect("task")


def snapshot(coord: Coordinator) -> tuple[object, ...]:
    phase = coord.engine.phase
    assert phase is not None
    return (
        phase.round,
        phase.index,
        sorted(phase.replies),
        coord.engine.completed_rounds,
        len(coord.store.rounds()),
    )


def rejoin(coord: Coordinator, agent_id: str) -> tuple[ScriptedAgent, pb.Envelope]:
    """Reconnect after a refusal: the coordinator re-sends the pending task."""
    agent = ScriptedAgent(coord.target, agent_id)
    agent.register()
    return agent, agent.expect("task")


def test_malformed_bytes_refused(coord: Coordinator) -> None:
    a, _, _, _ = start_round(coord)
    before = snapshot(coord)
    a.t.send_raw(b"\xff\xfe this is not a frame")
    err = a.refusal()
    assert err.code == pb.ERROR_CODE_INVALID_ARGUMENT
    assert "malformed frame" in err.reason
    assert snapshot(coord) == before
    _, task = rejoin(coord, "a")
    assert task.task.action == "train_predict"


def test_tensor_bytes_not_matching_shape_refused(coord: Coordinator) -> None:
    a, task, _, _ = start_round(coord)
    before = snapshot(coord)
    bad = codec.encode("soft", soft_predictions(PER_ROUND))
    bad.data = bad.data[:-4]
    a.send(task.round, result=pb.Result(phase=0, action="train_predict", tensors=[bad]))
    err = a.refusal()
    assert err.code == pb.ERROR_CODE_INVALID_ARGUMENT
    assert "do not match shape" in err.reason
    assert snapshot(coord) == before


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_soft_predictions_refused(coord: Coordinator, value: float) -> None:
    a, task, _, _ = start_round(coord)
    before = snapshot(coord)
    soft = soft_predictions(PER_ROUND)
    soft[3, 2] = value
    a.answer(task, {"soft": soft})
    err = a.refusal()
    assert err.code == pb.ERROR_CODE_INVALID_ARGUMENT
    assert "NaN or Inf" in err.reason
    assert snapshot(coord) == before


def test_wrong_soft_shape_refused_by_strategy(coord: Coordinator) -> None:
    a, task, _, _ = start_round(coord)
    before = snapshot(coord)
    a.answer(task, {"soft": soft_predictions(PER_ROUND)[:, :9]})
    err = a.refusal()
    assert err.code == pb.ERROR_CODE_INVALID_ARGUMENT
    assert "expected [50, 10]" in err.reason
    assert snapshot(coord) == before


def test_logits_instead_of_probabilities_refused(coord: Coordinator) -> None:
    a, task, _, _ = start_round(coord)
    a.answer(task, {"soft": soft_predictions(PER_ROUND) * 3})
    err = a.refusal()
    assert err.code == pb.ERROR_CODE_INVALID_ARGUMENT
    assert "not 1" in err.reason


def test_declared_size_above_limit_refused_before_allocation(coord: Coordinator) -> None:
    a, _, _, _ = start_round(coord)
    before = snapshot(coord)
    head = pb.Head(
        transfer_id=7, envelope=pb.Envelope(agent_id="a"), blob_bytes=[1 << 40], chunk_bytes=1 << 20
    )
    a.t.send_raw(pb.Frame(head=head).SerializeToString())
    err = a.refusal()
    assert err.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
    assert "above this receiver's maximum" in err.reason
    assert snapshot(coord) == before


def test_unknown_agent_refused(coord: Coordinator) -> None:
    start_round(coord)
    before = snapshot(coord)
    ghost = ScriptedAgent(coord.target, "ghost")
    ghost.send(1, result=pb.Result(phase=0, action="train_predict"))
    err = ghost.refusal()
    assert err.code == pb.ERROR_CODE_NOT_FOUND
    assert "unknown agent 'ghost'" in err.reason
    assert snapshot(coord) == before


def test_agent_reporting_for_another_refused(coord: Coordinator) -> None:
    a, task, _, _ = start_round(coord)
    before = snapshot(coord)
    a.answer(task, {"soft": soft_predictions(PER_ROUND)}, agent_id="b")
    err = a.refusal()
    assert err.code == pb.ERROR_CODE_PERMISSION_DENIED
    assert "'a' may not send for agent 'b'" in err.reason
    assert snapshot(coord) == before


def test_registering_as_another_agent_on_a_bound_stream_refused(coord: Coordinator) -> None:
    a, _, _, _ = start_round(coord)
    rows = stored_agents(coord)
    a.send(register=pb.Register(), agent_id="b")
    err = a.refusal()
    assert err.code == pb.ERROR_CODE_FAILED_PRECONDITION  # one registration per stream
    assert "registered already" in err.reason
    assert stored_agents(coord) == rows


def test_duplicate_upload_refused(coord: Coordinator) -> None:
    a, task, _, _ = start_round(coord)
    a.answer(task, {"soft": soft_predictions(PER_ROUND)})
    a.answer(task, {"soft": soft_predictions(PER_ROUND, seed=1)})
    err = a.refusal()
    assert err.code == pb.ERROR_CODE_ALREADY_EXISTS
    assert "duplicate upload" in err.reason
    phase = coord.engine.phase
    assert phase is not None and sorted(phase.replies) == ["a"]
    np.testing.assert_array_equal(phase.replies["a"].tensors["soft"], soft_predictions(PER_ROUND))


def test_upload_for_closed_round_refused(coord: Coordinator) -> None:
    a, task_a, b, task_b = start_round(coord)
    for agent, task in ((a, task_a), (b, task_b)):
        agent.answer(task, {"soft": soft_predictions(PER_ROUND)})
    distill_a, distill_b = a.expect("task"), b.expect("task")
    for agent, task in ((a, distill_a), (b, distill_b)):
        agent.answer(task, metrics={"test_acc": 0.5})
    a.expect("task")  # round 2 has begun
    b.expect("task")
    before = snapshot(coord)
    assert before[0] == 2
    a.answer(task_a, {"soft": soft_predictions(PER_ROUND)})
    err = a.refusal()
    assert err.code == pb.ERROR_CODE_FAILED_PRECONDITION
    assert "round 1 phase 0 is closed" in err.reason
    assert snapshot(coord) == before


def test_wrong_model_shape_refused_at_registration(coord: Coordinator) -> None:
    agent = ScriptedAgent(coord.target, "odd")
    agent.send(
        register=pb.Register(
            model=pb.ModelInfo(
                architecture="x", parameter_count=10, input_shape=[3, 32, 32], num_classes=10
            ),
            num_train_samples=5,
        )
    )
    err = agent.refusal()
    assert err.code == pb.ERROR_CODE_FAILED_PRECONDITION
    assert "does not fit this run's data [1, 8, 8]" in err.reason
    assert "odd" not in coord.engine.agents


def test_redelivered_message_is_ignored_not_refused(coord: Coordinator) -> None:
    a, task_a, b, task_b = start_round(coord)
    a.answer(task_a, {"soft": soft_predictions(PER_ROUND)})
    a.seq -= 1  # the same message number again, as an at-least-once transport may deliver
    a.answer(task_a, {"soft": soft_predictions(PER_ROUND)})
    b.answer(task_b, {"soft": soft_predictions(PER_ROUND)})
    assert a.expect("task").task.action == "distill"
    assert b.expect("task").task.action == "distill"

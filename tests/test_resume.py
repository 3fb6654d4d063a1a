"""A restarted coordinator resumes at the last completed round from SQLite + tensor files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.harness import ScriptedAgent, make_config, running_coordinator, soft_predictions

PER_ROUND = 50


def play_round(agents: list[ScriptedAgent]) -> int:
    tasks = [a.expect("task") for a in agents]
    for a, t in zip(agents, tasks, strict=True):
        a.answer(t, {"soft": soft_predictions(PER_ROUND)})
    distill = [a.expect("task") for a in agents]
    for a, t in zip(agents, distill, strict=True):
        assert t.task.action == "distill"
        a.answer(t, metrics={"test_acc": 0.25 + t.round / 10})
    return tasks[0].round


def test_restart_resumes_after_last_completed_round(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, min_agents=2, rounds=3)
    with running_coordinator(cfg) as coord:
        agents = [ScriptedAgent(coord.target, n) for n in ("a", "b")]
        for a in agents:
            a.register()
        assert play_round(agents) == 1
        second = [a.expect("task") for a in agents]  # round 2 started, then the crash
        assert {t.round for t in second} == {2}
        bytes_round_1 = coord.meter.total(round_=1)
        for a in agents:
            a.close()
    db = sqlite3.connect(Path(cfg.run.state_dir) / "run.sqlite")
    assert [r[0] for r in db.execute("SELECT round FROM rounds")] == [1]
    db.close()

    with running_coordinator(cfg) as coord:
        assert coord.engine.completed_rounds == 1
        assert set(coord.engine.agents) == {"a", "b"}
        assert coord.meter.total(round_=1) == bytes_round_1
        agents = [ScriptedAgent(coord.target, n) for n in ("a", "b")]
        for a in agents:
            assert a.register().completed_rounds == 1
        assert play_round(agents) == 2
        assert play_round(agents) == 3
        finish = [a.expect("task") for a in agents]
        assert {t.task.action for t in finish} == {"finish"}
        for a, t in zip(agents, finish, strict=True):
            a.answer(t, metrics={"final_test_acc": 0.5, "onnx_max_abs_diff": 1e-7})
        for a in agents:
            a.expect("shutdown")
        rounds = coord.store.rounds()
    assert [r.round for r in rounds] == [1, 2, 3]
    assert [r.metrics["mean_test_acc"] for r in rounds] == [0.35, 0.45, 0.55]

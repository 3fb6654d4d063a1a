"""The strategy's matrices are visible: KT-pFL's c is saved each round as CSV, drawn as a
heatmap in the run's output folder, and served by the coordinator's HTTP endpoint
(a real coordinator with scripted agents over gRPC; no torch)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator import config
from coordinator.config import ConfigError, RunConfig, ServerSection
from coordinator.inspection import (
    Board,
    InspectionWriter,
    InspectServer,
    Snapshot,
    csv_path,
    heatmap_path,
    read_csv,
)
from coordinator.strategies.base import Inspection
from coordinator.strategies.ktpfl import KTPFL
from tests.harness import ScriptedAgent, make_config, running_coordinator, soft_predictions

PER_ROUND = 50
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def get(base: str, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def get_json(base: str, path: str) -> Any:
    status, ctype, body = get(base, path)
    assert (status, ctype) == (200, "application/json"), (status, body)
    return json.loads(body)


def play_round(agents: list[ScriptedAgent]) -> None:
    tasks = [a.expect("task") for a in agents]
    for i, (a, t) in enumerate(zip(agents, tasks, strict=True)):
        a.answer(t, {"soft": soft_predictions(PER_ROUND, seed=i % 2 + 10 * t.round)})
    for a in agents:
        t = a.expect("task")
        assert t.task.action == "distill"
        a.answer(t)


def complete_first_round(coord: Any, names: tuple[str, ...]) -> list[ScriptedAgent]:
    """Register scripted agents, play round 1 and wait until the engine has completed it."""
    agents = [ScriptedAgent(coord.target, n) for n in names]
    for a in agents:
        a.register()
    play_round(agents)
    wait_for(lambda: coord.engine.completed_rounds == 1, "round 1")
    return agents


def wait_for(cond: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_ktpfl_c_is_saved_drawn_and_served(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, algorithm="kt-pfl", min_agents=3, rounds=2)
    ids = ["a", "b", "c"]
    with running_coordinator(cfg) as coord:
        http = coord.running.http
        assert http is not None and http.address.startswith("http://127.0.0.1:")
        base = http.address
        status = get_json(base, "/status")
        assert status["run_id"] == "t" and status["algorithm"] == "kt-pfl"
        assert (status["round"], status["rounds"], status["inspections"]) == (0, 2, [])
        assert get_json(base, "/inspect") == {"round": 0, "names": []}
        assert get(base, "/inspect/c")[0] == 404

        agents = [ScriptedAgent(coord.target, n) for n in ids]
        for a in agents:
            a.register()
        play_round(agents)
        wait_for(lambda: get_json(base, "/status")["round"] == 1, "round 1 on /status")
        play_round(agents)
        wait_for(lambda: get_json(base, "/inspect")["round"] == 2, "round 2 on /inspect")
        status = get_json(base, "/status")
        assert (status["round"], status["agents"], status["connected"]) == (2, 3, 3)
        assert status["inspections"] == ["c"]
        assert "/inspect/c.png" in get_json(base, "/")["endpoints"]

        strategy = coord.engine.strategy
        assert isinstance(strategy, KTPFL)
        c, c_ids = strategy.coefficients()  # the engine is idle: waiting for the finish phase
        served = get_json(base, "/inspect/c")
        assert served["name"] == "c" and served["round"] == 2
        assert served["rows"] == served["columns"] == c_ids == ids
        np.testing.assert_allclose(np.array(served["matrix"]), c, rtol=0, atol=1e-12)
        assert "teacher" in served["description"]
        status_code, ctype, png = get(base, "/inspect/c.png")
        assert (status_code, ctype, png[:8]) == (200, "image/png", PNG_MAGIC)
        assert get(base, "/inspect/nope")[0] == 404
        assert get(base, "/metrics")[0] == 404
        for a in agents:
            a.close()

    out = Path(cfg.run.state_dir)  # the default output folder of start()
    first, second = (read_csv(csv_path(out, "c", r)) for r in (1, 2))
    assert first.rows == first.columns == second.rows == tuple(ids)
    np.testing.assert_array_equal(second.matrix, c)  # repr() round-trips float64
    assert not np.array_equal(first.matrix, second.matrix)
    np.testing.assert_allclose(first.matrix.sum(axis=0), 1.0)
    assert heatmap_path(out, "c").read_bytes()[:8] == PNG_MAGIC
    header = csv_path(out, "c", 2).read_text().splitlines()[0]
    assert header == ",a,b,c"


def test_algorithms_without_inspections_write_nothing(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, algorithm="fedmd", min_agents=2, rounds=1)
    with running_coordinator(cfg) as coord:
        agents = complete_first_round(coord, ("a", "b"))
        assert coord.running.http is not None
        assert get_json(coord.running.http.address, "/inspect") == {"round": 1, "names": []}
        for a in agents:
            a.close()
    out = Path(cfg.run.state_dir)
    assert not (out / "inspect").exists()
    assert not list(out.glob("*_heatmap.png"))


def snapshot(inspections: dict[str, Inspection], round_: int = 3) -> Snapshot:
    return Snapshot("r", "kt-pfl", round_, 5, 2, 2, False, inspections, round_, 0.0)


def test_writer_and_endpoint_take_any_named_matrix(tmp_path: Path) -> None:
    rect = Inspection(np.arange(6.0).reshape(2, 3), ["r0", "r1"], ["x", "y", "z"], "demo")
    with pytest.raises(ValueError, match="read-only"):
        rect.matrix[0, 0] = 1.0
    with pytest.raises(ValueError, match="shape"):
        Inspection(np.zeros((2, 2)), ["a"], ["a", "b"])
    writer = InspectionWriter(tmp_path)
    try:
        paths = writer.write(snapshot({"w": rect, "bad name": rect}))
    finally:
        writer.close()
    assert paths == [csv_path(tmp_path, "w", 3), heatmap_path(tmp_path, "w")]
    back = read_csv(paths[0])
    assert back.rows == ("r0", "r1") and back.columns == ("x", "y", "z")
    np.testing.assert_array_equal(back.matrix, rect.matrix)

    board = Board()
    server = InspectServer("127.0.0.1", 0, board)  # handle() needs no socket
    try:
        assert server.handle("/status")[0] == 503
        board.publish(snapshot({"w": rect}))
        status, _, body = server.handle("/inspect/w")
        assert status == 200
        assert json.loads(body)["matrix"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        assert server.handle("/inspect/w.png")[2][:8] == PNG_MAGIC
    finally:
        server.stop()


def test_http_setting_is_validated() -> None:
    def with_http(value: object) -> RunConfig:
        return config.from_dict({"server": {"http": value}})

    assert RunConfig().server.http == "127.0.0.1:0"
    assert with_http("").server.http == ""
    assert with_http("[::1]:8080").server.http == "[::1]:8080"
    assert config.split_hostport("0.0.0.0:9100") == ("0.0.0.0", 9100)
    for bad in ("localhost", "127.0.0.1:70000", "::1:80", ":80", "h:port"):
        with pytest.raises(ConfigError, match=r"server\.http = .* is invalid"):
            with_http(bad)
    with pytest.raises(ConfigError, match=r"server\.http = 8080 has type int"):
        with_http(8080)


def test_http_can_be_disabled(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    cfg = replace(cfg, server=ServerSection(grpc="127.0.0.1:0", http=""))
    with running_coordinator(cfg) as coord:
        assert coord.running.http is None
        assert coord.running.board is not None


def test_resumed_run_serves_its_last_round_at_once(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, algorithm="kt-pfl", min_agents=2, rounds=3)
    with running_coordinator(cfg) as coord:
        agents = complete_first_round(coord, ("a", "b"))
        for a in agents:
            a.close()
    with running_coordinator(cfg) as coord:
        assert coord.running.http is not None
        base = coord.running.http.address
        wait_for(lambda: get(base, "/inspect")[0] == 200, "the first snapshot")
        assert get_json(base, "/inspect") == {"round": 1, "names": ["c"]}
        assert get_json(base, "/inspect/c")["rows"] == ["a", "b"]

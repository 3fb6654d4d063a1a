"""kt-pfl, sim-pfl and topk-pfl strategies through their public API, with synthetic
soft predictions (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator import strategies
from coordinator.heatmap import save_heatmap
from coordinator.strategies.base import AgentInfo, Reply, RunContext, Strategy
from coordinator.strategies.ktpfl import KTPFL
from pfl_edge.errors import Rejection
from pfl_edge.params import COMMON, resolve

PUBLIC = 30
CLASSES = 10


def make(name: str, **params: object) -> Strategy:
    cls = strategies.get(name)
    resolved = resolve({**COMMON, **cls.params}, params)
    return cls(RunContext(resolved, CLASSES, PUBLIC, seed=0))


def fleet(n: int) -> list[AgentInfo]:
    return [AgentInfo(f"a{i}", "lenet5", 1000, 50 + 10 * i, CLASSES) for i in range(n)]


def group_soft(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """First half of the agents favour classes 0-4, second half 5-9."""
    logits = rng.normal(size=(n, PUBLIC, CLASSES)).astype(np.float32)
    logits[: n // 2, :, :5] += 4.0
    logits[n // 2 :, :, 5:] += 4.0
    s = np.exp(logits / 3.0)
    s /= s.sum(axis=-1, keepdims=True)
    return {f"a{i}": s[i] for i in range(n)}


def soft_replies(soft: dict[str, np.ndarray]) -> dict[str, Reply]:
    return {a: Reply("train_predict", {"soft": s}, {}) for a, s in soft.items()}


def play_round(
    s: Strategy, rnd: int, agents: list[AgentInfo], soft: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """One full round; returns the distillation targets."""
    first = s.begin_round(rnd, agents)
    assert {a: i.action for a, i in first.items()} == {a.agent_id: "train_predict" for a in agents}
    replies = soft_replies({a.agent_id: soft[a.agent_id] for a in agents})
    for a in agents:
        s.validate(rnd, 0, a, replies[a.agent_id])
    distill = s.end_phase(rnd, 0, replies)
    assert distill is not None
    assert all(i.action == "distill" for i in distill.values())
    targets = {a: i.tensors["target"] for a, i in distill.items()}
    done = {a: Reply("distill", {}, {"test_acc": 0.5}) for a in distill}
    assert s.end_phase(rnd, 1, done) is None
    return targets


def test_first_round_targets_are_the_uniform_mean_then_c_personalizes() -> None:
    rng = np.random.default_rng(0)
    s = make("kt-pfl", c_lr=1.0, c_rho=0.1)
    assert isinstance(s, KTPFL)
    agents = fleet(6)
    soft = group_soft(rng, 6)
    targets = play_round(s, 1, agents, soft)
    mean = np.mean(np.stack(list(soft.values())), axis=0)
    for t in targets.values():
        assert t.shape == (PUBLIC, CLASSES)
        np.testing.assert_allclose(t, mean, rtol=1e-5)
    for rnd in (2, 3):
        play_round(s, rnd, agents, soft)
    c, ids = s.coefficients()
    assert ids == [a.agent_id for a in agents]
    np.testing.assert_allclose(c.sum(axis=0), 1.0)
    for n in range(6):
        same = [m for m in range(6) if m != n and (m < 3) == (n < 3)]
        other = [m for m in range(6) if (m < 3) != (n < 3)]
        assert c[same, n].min() > c[other, n].max()
    summary = s.summary()
    assert summary["c_self_weight"] > 1 / 6
    assert 0 < summary["c_peer_entropy"] < 1
    assert summary["c_max_change"] > 0
    # Personalized now: a student's target leans towards its own group's predictions.
    targets = play_round(s, 4, agents, soft)
    assert targets["a0"][:, :5].sum() > mean[:, :5].sum()
    assert targets["a5"][:, 5:].sum() > mean[:, 5:].sum()


def test_state_round_trip_restores_c_and_targets() -> None:
    rng = np.random.default_rng(1)
    s = make("kt-pfl")
    agents = fleet(4)
    soft = group_soft(rng, 4)
    play_round(s, 1, agents, soft)
    restored = make("kt-pfl")
    restored.load_state(s.state())
    assert isinstance(restored, KTPFL) and isinstance(s, KTPFL)
    np.testing.assert_array_equal(restored.coefficients()[0], s.coefficients()[0])
    assert restored.coefficients()[1] == s.coefficients()[1]
    a, b = play_round(s, 2, agents, soft), play_round(restored, 2, agents, soft)
    for agent in a:
        np.testing.assert_array_equal(a[agent], b[agent])
    with pytest.raises(ValueError, match="shape"):
        restored.load_state({"c": np.zeros((3, 3)), "agent_ids": np.array(["a0", "a1"])})


def test_partial_participation_and_new_agents() -> None:
    rng = np.random.default_rng(2)
    s = make("kt-pfl")
    assert isinstance(s, KTPFL)
    agents = fleet(6)
    soft = group_soft(rng, 6)
    play_round(s, 1, agents[:4], soft)
    c1, ids = s.coefficients()
    assert ids == ["a0", "a1", "a2", "a3"]
    play_round(s, 2, [agents[1], agents[3], agents[4], agents[5]], soft)
    c2, ids = s.coefficients()
    assert ids == ["a0", "a1", "a2", "a3", "a4", "a5"]
    np.testing.assert_allclose(c2.sum(axis=0), 1.0)
    # a4 and a5 joined with weight 1/6; old weights were scaled by 4/6 before the update.
    grown = np.full((6, 6), 1 / 6)
    grown[:4, :4] = c1 * 4 / 6
    sampled = np.array([1, 3, 4, 5])
    untouched = np.ones((6, 6), dtype=bool)
    untouched[np.ix_(sampled, sampled)] = False
    np.testing.assert_allclose(c2[untouched], grown[untouched])
    assert not np.allclose(c2[~untouched], grown[~untouched])


def test_validate_rejects_malformed_soft_predictions() -> None:
    s = make("kt-pfl")
    agents = fleet(2)
    s.begin_round(1, agents)
    good = np.full((PUBLIC, CLASSES), 1 / CLASSES, dtype=np.float32)
    s.validate(1, 0, agents[0], Reply("train_predict", {"soft": good}, {}))
    with pytest.raises(Rejection, match=r"shape \[30, 9\], expected \[30, 10\]"):
        s.validate(1, 0, agents[0], Reply("train_predict", {"soft": good[:, :9]}, {}))
    logits = good * 5
    with pytest.raises(Rejection, match=r"row 0 sums to 5\.0000, not 1"):
        s.validate(1, 0, agents[0], Reply("train_predict", {"soft": logits}, {}))
    with pytest.raises(Rejection, match="lacks tensor 'soft'"):
        s.validate(1, 0, agents[0], Reply("train_predict", {}, {}))


def test_unknown_projection_is_refused() -> None:
    with pytest.raises(ValueError, match="c_projection"):
        make("kt-pfl", c_projection="clamp")


@pytest.mark.parametrize("projection", ["simplex", "softmax", "none"])
def test_every_projection_runs_rounds(projection: str) -> None:
    rng = np.random.default_rng(3)
    s = make("kt-pfl", c_projection=projection)
    agents = fleet(4)
    soft = group_soft(rng, 4)
    for rnd in (1, 2):
        targets = play_round(s, rnd, agents, soft)
    for t in targets.values():
        np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-5)


def test_sim_and_topk_targets() -> None:
    rng = np.random.default_rng(4)
    agents = fleet(6)
    soft = group_soft(rng, 6)
    for name in ("sim-pfl", "topk-pfl"):
        targets = play_round(make(name), 1, agents, soft)
        for t in targets.values():
            np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-5)
    alone = play_round(make("topk-pfl", topk_k=1), 1, agents, soft)
    for a, t in alone.items():
        np.testing.assert_allclose(t, soft[a], rtol=1e-5)
    top3 = play_round(make("topk-pfl", topk_k=3), 1, agents, soft)
    np.testing.assert_allclose(
        top3["a0"], np.mean([soft[f"a{i}"] for i in range(3)], axis=0), rtol=1e-5
    )
    with pytest.raises(ValueError, match="topk_k"):
        make("topk-pfl", topk_k=0)


@pytest.mark.parametrize("name", ["sim-pfl", "topk-pfl"])
def test_sim_and_topk_show_the_weights_they_used(name: str) -> None:
    agents = fleet(6)
    s = make(name)
    assert s.inspect() == {}
    soft = group_soft(np.random.default_rng(6), 6)
    targets = play_round(s, 1, agents, soft)
    w = s.inspect()["w"]
    assert w.rows == w.columns == tuple(a.agent_id for a in agents)
    np.testing.assert_allclose(w.matrix.sum(axis=0), 1.0, rtol=1e-9)
    # Same-group teachers (a0-a2 favour classes 0-4) outweigh the others for student a0,
    # and the matrix is the one that formed the targets.
    assert w.matrix[:3, 0].sum() > w.matrix[3:, 0].sum()
    expected = sum(w.matrix[m, 0] * soft[f"a{m}"] for m in range(6))
    np.testing.assert_allclose(targets["a0"], expected, rtol=1e-4, atol=1e-6)


def test_heatmap_is_written(tmp_path: Path) -> None:
    s = make("kt-pfl")
    play_round(s, 1, fleet(3), group_soft(np.random.default_rng(5), 3))
    assert isinstance(s, KTPFL)
    c, ids = s.coefficients()
    path = save_heatmap(c, ids, tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="agent ids"):
        save_heatmap(c, ids[:2], tmp_path / "bad.png")

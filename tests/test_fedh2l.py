"""FedH2L: the strategy has each agent gather its peers' posteriors without aggregating
them (how they travel is the engine's choice: tests/test_peer_exchange.py), and the
mutual-learning loss pulls an agent's posteriors towards its peers' while it learns its
own labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coordinator import strategies
from coordinator.strategies.base import AgentInfo, Gather, Reply, RunContext, Strategy
from edge_agent.training import soft_predictions, train_mutual
from pfl_edge.errors import Rejection
from pfl_edge.params import COMMON, resolve
from tests.test_training import linear, separable

torch.set_num_threads(1)

PUBLIC = 20
CLASSES = 10


def make(**params: object) -> Strategy:
    cls = strategies.get("fedh2l")
    return cls(RunContext(resolve({**COMMON, **cls.params}, params), CLASSES, PUBLIC, seed=0))


def agents(n: int) -> list[AgentInfo]:
    return [AgentInfo(f"a{i}", "lenet5", 1000, 50, CLASSES) for i in range(n)]


def posteriors(seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).random((PUBLIC, CLASSES)).astype(np.float32)
    return np.asarray(p / p.sum(axis=1, keepdims=True))


def test_each_agent_gathers_the_others_posteriors_in_agent_order() -> None:
    s = make(wire="int8")
    fleet = agents(3)
    first = s.begin_round(1, fleet)
    assert {a: (i.action, i.share) for a, i in first.items()} == {
        "a0": ("predict", "soft"),
        "a1": ("predict", "soft"),
        "a2": ("predict", "soft"),
    }
    # Replies exchanged directly lack "soft": the strategy needs only who answered.
    replies = {a.agent_id: Reply("predict", {}, {}) for a in reversed(fleet)}
    learn = s.end_phase(1, 0, replies)
    assert learn is not None
    assert {a: i.gather for a, i in learn.items()} == {
        "a0": Gather("peers", "soft", ("a1", "a2")),
        "a1": Gather("peers", "soft", ("a0", "a2")),
        "a2": Gather("peers", "soft", ("a0", "a1")),
    }
    assert all(i.action == "learn" and i.wire == "int8" and not i.tensors for i in learn.values())
    assert s.end_phase(1, 1, {a: Reply("learn", {}, {"test_acc": 0.5}) for a in learn}) is None


def test_a_lone_agent_gets_no_peers() -> None:
    s = make()
    s.begin_round(1, agents(1))
    learn = s.end_phase(1, 0, {"a0": Reply("predict", {"soft": posteriors(0)}, {})})
    assert learn is not None and learn["a0"].gather is None and learn["a0"].tensors == {}


def test_refuses_uploads_that_are_not_posteriors() -> None:
    s = make()
    (agent,) = agents(1)
    # Without "soft" it was exchanged directly; the engine refuses a mailbox reply without it.
    s.validate(1, 0, agent, Reply("predict", {}, {}))
    with pytest.raises(Rejection, match="not 1"):
        s.validate(1, 0, agent, Reply("predict", {"soft": 3 * posteriors(0)}, {}))
    with pytest.raises(Rejection, match="has shape"):
        s.validate(1, 0, agent, Reply("predict", {"soft": posteriors(0)[:5]}, {}))


def test_mutual_learning_pulls_towards_the_peers_and_learns_the_labels() -> None:
    x, y = separable(64, 1)
    # Peers that agree on unlabeled noise, where labels alone teach the model nothing.
    public = np.random.default_rng(2).integers(0, 200, (32, 1, 8, 8)).astype(np.uint8)
    peers = np.tile(np.array([0.8, 0.2], np.float32), (2, len(public), 1))

    def trained(weight: float) -> tuple[float, float]:
        """(gap to the peers' posteriors, training accuracy) after mutual learning."""
        torch.manual_seed(0)
        model = linear(2)
        kwargs = {"temperature": 1.0, "epochs": 20, "batch_size": 16, "lr": 0.02}
        rng = np.random.default_rng(0)
        train_mutual(model, x, y, public, peers, weight=weight, rng=rng, **kwargs)  # type: ignore[arg-type]
        gap = np.abs(soft_predictions(model, public, temperature=1.0) - peers[0]).mean()
        acc = (soft_predictions(model, x, temperature=1.0).argmax(1) == y).mean()
        return float(gap), float(acc)

    alone, mutual = trained(0.0), trained(1.0)
    assert mutual[0] < 0.5 * alone[0]
    assert alone[1] > 0.9 and mutual[1] > 0.9


def test_mutual_learning_checks_the_peers_shape() -> None:
    x, y = separable(8, 3)
    with pytest.raises(ValueError, match=r"peers must be \(P, 8, classes\)"):
        train_mutual(
            linear(2),
            x,
            y,
            x,
            np.full((8, 2), 0.5),
            weight=1.0,
            temperature=1.0,
            epochs=1,
            batch_size=4,
            lr=0.1,
            rng=np.random.default_rng(0),
        )

"""KT-pFL (Zhang et al., NeurIPS 2021): personalized soft targets from a learned
knowledge coefficient matrix c.

Per round (Algorithm 1): the sampled agents train locally and upload soft predictions
s_n on the round's public batch; agent n gets t_n = sum_m c[m, n] s_m over the agents
that answered (column n of c renormalised over them); after the distillation phase c is
updated by one step of eq. (7). The math and every deviation from the paper are in
`ktpfl_math`. c covers every agent ever sampled (grown as new ones appear, new weights
1/N); with partial participation only the sampled rows and columns change.

Parameters (with the paper's symbols): c_lr = eta_3, c_rho = rho, c_lambda = lambda,
c_projection = how columns are kept valid ("simplex": Euclidean projection, default;
"softmax": the authors' code, column <- softmax(c_softmax_scale * column); "none":
the paper's unconstrained step). A step shrinks c towards 1/N by the factor
1 - 2 * c_lr * c_rho, so keep c_lr * c_rho below 0.5.

Defaults: at our scale (KL averaged over public samples, weights D_n / D summing to 1)
the KL gradient of an entry is of order 1/N, so the paper's eta_3 = 0.01 with rho = 0.5
keeps c at 1/N to about three decimals and kt-pfl acts as fedmd. c_lr = 5, c_rho = 0.02
were chosen by replaying c updates on the recorded soft predictions of a 20-agent
MNIST fleet (and one 20-round pilot): c then separates peers with the same class mix
from the others within 3-4 rounds; the self weight settles near 0.3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from coordinator.strategies import ktpfl_math as km
from coordinator.strategies.base import (
    AgentInfo,
    Inspection,
    Instruction,
    Reply,
    RunContext,
)
from coordinator.strategies.soft_targets import WeightedTargets
from pfl_edge.values import Scalar


class KTPFL(WeightedTargets):
    name = "kt-pfl"
    params: ClassVar[dict[str, Scalar]] = {
        "c_lr": 5.0,
        "c_rho": 0.02,
        "c_lambda": 1.0,
        "c_projection": "simplex",
        "c_softmax_scale": 5.0,
    }

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        projection = str(ctx.params["c_projection"])
        if projection not in km.PROJECTIONS:
            raise ValueError(f"c_projection must be one of {km.PROJECTIONS}, got {projection!r}")
        self.projection: km.Projection = projection
        self.agent_ids: list[str] = []
        self.c = np.zeros((0, 0))
        self._last_update: dict[str, float] = {}

    def begin_round(self, round_: int, agents: Sequence[AgentInfo]) -> dict[str, Instruction]:
        known = set(self.agent_ids)
        self.agent_ids.extend(a.agent_id for a in agents if a.agent_id not in known)
        if len(self.agent_ids) > self.c.shape[0]:
            self.c = km.grow(self.c, len(self.agent_ids))
        self.mixed = None
        return super().begin_round(round_, agents)

    def weights(self, ids: Sequence[str], soft: np.ndarray) -> np.ndarray:
        return km.block_weights(self.c, self._index(ids))

    def after_distill(self, round_: int, replies: Mapping[str, Reply]) -> None:
        """One c step on the predictions uploaded in this round's phase 0 (all agents that
        uploaded them, whether or not their distillation reply arrived)."""
        if self.mixed is None:
            return
        ids, stacked = self.mixed.ids, self.mixed.soft
        sizes = np.array([max(1, self.agents[a].num_train_samples) for a in ids], dtype=float)
        before = self.c
        self.c, objective = km.update_block(
            self.c,
            self._index(ids),
            stacked,
            sizes,
            lr=float(self.ctx.params["c_lr"]),
            lam=float(self.ctx.params["c_lambda"]),
            rho=float(self.ctx.params["c_rho"]),
            projection=self.projection,
            softmax_scale=float(self.ctx.params["c_softmax_scale"]),
        )
        self._last_update = {
            "c_objective": objective,
            "c_max_change": float(np.abs(self.c - before).max()),
        }
        self.mixed = None

    def coefficients(self) -> tuple[np.ndarray, list[str]]:
        """A copy of c ([teacher m, student n]) and the agent ids of its rows and columns."""
        return self.c.copy(), list(self.agent_ids)

    def inspect(self) -> dict[str, Inspection]:
        """{"c": c with the agent ids as row (teacher) and column (student) labels}."""
        if not self.agent_ids:
            return {}
        return {
            "c": Inspection(
                self.c,
                self.agent_ids,
                self.agent_ids,
                "knowledge coefficients c[m, n]: weight of teacher m (row) in the soft "
                "target of student n (column); columns sum to 1",
                row_title="teacher m",
                column_title="student n (column: weights of its teachers)",
            )
        }

    def state(self) -> dict[str, np.ndarray]:
        return {"c": self.c.copy(), "agent_ids": np.array(self.agent_ids, dtype=np.str_)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        c = np.asarray(state["c"], dtype=np.float64)
        ids = [str(a) for a in np.asarray(state["agent_ids"]).reshape(-1)]
        if c.shape != (len(ids), len(ids)):
            raise ValueError(f"saved c has shape {list(c.shape)} for {len(ids)} agents")
        self.c, self.agent_ids = c, ids

    def summary(self) -> dict[str, float]:
        """c_self_weight: mean diagonal; c_peer_entropy: mean over students of the entropy
        of their weights on the other agents (renormalised), divided by log(N - 1), so
        1 means uniform over peers; c_max_change: largest entry change in the last
        update; c_objective: eq. (7)'s objective before it (both absent before the first)."""
        n = self.c.shape[0]
        if n == 0:
            return {}
        out = {"c_self_weight": float(np.mean(np.diag(self.c))), **self._last_update}
        if n > 2:
            off_diagonal = self.c.T[~np.eye(n, dtype=bool)].reshape(n, n - 1).T
            peers = km.normalise_columns(np.clip(off_diagonal, 0, None))
            logs = np.log(np.where(peers > 0, peers, 1.0))
            out["c_peer_entropy"] = float(np.mean(-np.sum(peers * logs, axis=0)) / np.log(n - 1))
        return out

    def _index(self, ids: Sequence[str]) -> np.ndarray:
        pos = {a: i for i, a in enumerate(self.agent_ids)}
        return np.array([pos[a] for a in ids], dtype=np.intp)

"""Agent half of an algorithm: answers the coordinator's instructions with local work.

A learner owns the agent's model and data. It gets each Task as a `TaskView` (action,
decoded tensors, params, the round's public sample indices) and returns a `Reply`.
It records its compute spans with `busy()`, and reports `test_acc` (accuracy on its
own held-out split) in the last reply of every round.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, cast

import numpy as np
import torch

from edge_agent import training
from pfl_edge.data.partition import ClientData
from pfl_edge.params import COMMON
from pfl_edge.values import Scalar


@dataclass(frozen=True)
class LearnerContext:
    agent_id: str
    model: torch.nn.Module
    data: ClientData
    public: np.ndarray
    """The whole public image set (uint8, N x C x H x W), fetched once and cached."""
    params: Mapping[str, Scalar]
    num_classes: int
    rng: np.random.Generator


@dataclass(frozen=True)
class TaskView:
    round: int
    phase: int
    action: str
    tensors: Mapping[str, np.ndarray]
    params: Mapping[str, Scalar]
    public_indices: np.ndarray
    """Indices into the public set chosen for this round (empty when none)."""


@dataclass
class Span:
    what: str
    start_unix: float
    end_unix: float


@dataclass
class LearnerReply:
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class Learner(abc.ABC):
    """Subclass, set `name` (the strategy's name), put the module in edge_agent/learners/."""

    name: ClassVar[str]

    def __init__(self, ctx: LearnerContext) -> None:
        self.ctx = ctx
        self.spans: list[Span] = []
        self.optimizers = training.Optimizers(ctx.model, keep=self.p("optimizer_state") == "run")

    @abc.abstractmethod
    def handle(self, task: TaskView) -> LearnerReply:
        """Do the work one instruction asks for. Unknown actions raise ValueError."""

    @contextlib.contextmanager
    def busy(self, what: str) -> Iterator[None]:
        """Record a span of local compute (training, prediction, distillation, evaluation)."""
        start = time.time()
        try:
            yield
        finally:
            self.spans.append(Span(what, start, time.time()))

    def take_spans(self) -> list[Span]:
        spans, self.spans = self.spans, []
        return spans

    # Helpers most learners share.

    def p(self, key: str) -> Scalar:
        """The run's value of parameter `key`; a COMMON one the run config lacks (a
        coordinator older than that parameter) takes COMMON's default."""
        if key in COMMON:
            return self.ctx.params.get(key, COMMON[key])
        return self.ctx.params[key]

    def settle_batchnorm(self) -> None:
        """After training: BatchNorm running statistics re-estimated on the private training
        data if the run says `recalibrate_bn`. Distillation and mutual learning feed the
        public batch in train mode, which leaves statistics of the public distribution that
        evaluation on the agent's own data would then use (README, KT-pFL)."""
        if self.p("recalibrate_bn"):
            training.recalibrate_batchnorm(self.ctx.model, self.ctx.data.x_train)

    def train_local(self) -> float:
        """The run's local epochs on private data (cross-entropy); mean loss of the last."""
        data = self.ctx.data
        with self.busy("train"):
            loss = training.train_epochs(
                self.ctx.model,
                data.x_train,
                data.y_train,
                epochs=int(self.p("local_epochs")),
                batch_size=int(self.p("batch_size")),
                lr=float(self.p("lr")),
                rng=self.ctx.rng,
                optimizer=str(self.p("optimizer")),
                optimizers=self.optimizers,
            )
            self.settle_batchnorm()
        return loss

    def test_accuracy(self) -> float:
        """Accuracy on the agent's own held-out split."""
        with self.busy("evaluate"):
            return training.evaluate(self.ctx.model, self.ctx.data.x_test, self.ctx.data.y_test)

    def public_batch(self, task: TaskView) -> np.ndarray:
        return cast(np.ndarray, self.ctx.public[task.public_indices])

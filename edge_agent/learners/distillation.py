"""Agent side of the soft-prediction methods (FedMD, KT-pFL and its variants), in the
order of KT-pFL's Algorithm 1: local epochs on private data, soft predictions
softmax(z/T) on the round's public batch, then distillation towards the target the
coordinator formed for this agent."""

from __future__ import annotations

import numpy as np

from edge_agent import training
from edge_agent.learners.base import Learner, LearnerReply, TaskView

TRAIN_PREDICT = "train_predict"
DISTILL = "distill"


class DistillationLearner(Learner):
    """Base of the soft-prediction learners; subclasses only set `name`."""

    def handle(self, task: TaskView) -> LearnerReply:
        if task.action == TRAIN_PREDICT:
            return self.train_predict(task)
        if task.action == DISTILL:
            return self.distill(task)
        raise ValueError(f"{self.name} learner cannot do {task.action!r}")

    def train_predict(self, task: TaskView) -> LearnerReply:
        loss = self.train_local()
        acc = self.test_accuracy()
        with self.busy("predict"):
            soft = training.soft_predictions(
                self.ctx.model, self.public_batch(task), temperature=float(self.p("temperature"))
            )
        return LearnerReply({"soft": soft}, {"train_loss": loss, "test_acc_before_distill": acc})

    def distill(self, task: TaskView) -> LearnerReply:
        target = task.tensors.get("target")
        public = self.public_batch(task)
        if target is None or target.shape != (len(public), self.ctx.num_classes):
            shape = None if target is None else list(target.shape)
            raise ValueError(
                f"distill needs a 'target' of shape {[len(public), self.ctx.num_classes]}"
                f", got {shape}"
            )
        with self.busy("distill"):
            loss = training.distill(
                self.ctx.model,
                public,
                as_distribution(target),
                temperature=float(self.p("temperature")),
                epochs=int(self.p("distill_epochs")),
                batch_size=int(self.p("distill_batch_size")),
                lr=float(self.p("distill_lr")),
                rng=self.ctx.rng,
                t2_scaling=bool(self.p("t2_scaling")),
                optimizer=str(self.p("distill_optimizer")),
                optimizers=self.optimizers,
            )
            self.settle_batchnorm()
        return LearnerReply({}, {"distill_loss": loss, "test_acc": self.test_accuracy()})


def as_distribution(target: np.ndarray) -> np.ndarray:
    """Rows clipped at 0 and renormalised: int8/float16 wire rounding breaks exact sums."""
    t = np.clip(np.asarray(target, dtype=np.float32), 0.0, None)
    sums = t.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError("a distillation target row has no positive entry")
    return np.asarray(t / sums)

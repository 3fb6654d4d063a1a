"""Local-only learner: trains on private data, shares nothing."""

from __future__ import annotations

from edge_agent.learners.base import Learner, LearnerReply, TaskView

TRAIN = "train"


class LocalLearner(Learner):
    name = "local"

    def handle(self, task: TaskView) -> LearnerReply:
        if task.action != TRAIN:
            raise ValueError(f"local learner cannot do {task.action!r}")
        loss = self.train_local()
        return LearnerReply({}, {"train_loss": loss, "test_acc": self.test_accuracy()})

"""Local-only learner: trains on private data, shares nothing."""

from __future__ import annotations

from edge_agent import training
from edge_agent.learners.base import Learner, LearnerReply, TaskView

TRAIN = "train"


class LocalLearner(Learner):
    name = "local"

    def handle(self, task: TaskView) -> LearnerReply:
        if task.action != TRAIN:
            raise ValueError(f"local learner cannot do {task.action!r}")
        model, data = self.ctx.model, self.ctx.data
        with self.busy("train"):
            loss = training.train_epochs(
                model,
                data.x_train,
                data.y_train,
                epochs=int(self.p("local_epochs")),
                batch_size=int(self.p("batch_size")),
                lr=float(self.p("lr")),
                rng=self.ctx.rng,
                optimizer=str(self.p("optimizer")),
            )
        with self.busy("evaluate"):
            acc = training.evaluate(model, data.x_test, data.y_test)
        return LearnerReply({}, {"train_loss": loss, "test_acc": acc})

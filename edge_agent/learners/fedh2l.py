"""FedH2L learner: posteriors on the round's public batch (shared with the peers); then
cross-entropy on private data plus `mutual_lambda` times the mean KL from the peers'
posteriors to its own, on the same batch. Whether the peers' posteriors came straight
from them (MQTT) or through the coordinator (gRPC), the runtime hands them over alike."""

from __future__ import annotations

from edge_agent import training
from edge_agent.learners.base import Learner, LearnerReply, TaskView
from edge_agent.learners.distillation import as_distribution

PREDICT = "predict"
LEARN = "learn"


class FedH2LLearner(Learner):
    name = "fedh2l"

    def handle(self, task: TaskView) -> LearnerReply:
        if task.action == PREDICT:
            with self.busy("predict"):
                soft = training.soft_predictions(
                    self.ctx.model,
                    self.public_batch(task),
                    temperature=float(self.p("temperature")),
                )
            return LearnerReply({"soft": soft})
        if task.action == LEARN:
            return self.learn(task)
        raise ValueError(f"fedh2l learner cannot do {task.action!r}")

    def learn(self, task: TaskView) -> LearnerReply:
        peers = task.tensors.get("peers")
        if peers is None:  # no peer answered: local training only
            return LearnerReply(
                {}, {"train_loss": self.train_local(), "test_acc": self.test_accuracy()}
            )
        public = self.public_batch(task)
        classes = self.ctx.num_classes
        if peers.ndim != 2 or peers.shape[1] != classes or len(peers) % len(public):
            raise ValueError(
                f"learn needs 'peers' of shape (P * {len(public)}, {classes}), "
                f"got {list(peers.shape)}"
            )
        stacked = as_distribution(peers).reshape(-1, len(public), classes)
        data = self.ctx.data
        with self.busy("train"):
            loss = training.train_mutual(
                self.ctx.model,
                data.x_train,
                data.y_train,
                public,
                stacked,
                weight=float(self.p("mutual_lambda")),
                temperature=float(self.p("temperature")),
                epochs=int(self.p("local_epochs")),
                batch_size=int(self.p("batch_size")),
                lr=float(self.p("lr")),
                rng=self.ctx.rng,
                optimizer=str(self.p("optimizer")),
                optimizers=self.optimizers,
            )
            self.settle_batchnorm()
        return LearnerReply({}, {"train_loss": loss, "test_acc": self.test_accuracy()})

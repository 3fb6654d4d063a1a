"""FedMD learner: distils towards the coordinator's uniform consensus."""

from __future__ import annotations

from edge_agent.learners.distillation import DistillationLearner


class FedMDLearner(DistillationLearner):
    name = "fedmd"

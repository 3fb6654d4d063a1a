"""KT-pFL learner: distils towards the personalized target the coordinator formed."""

from __future__ import annotations

from edge_agent.learners.distillation import DistillationLearner


class KTPFLLearner(DistillationLearner):
    name = "kt-pfl"

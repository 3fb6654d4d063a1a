"""Sim-pFL (baseline of the KT-pFL paper): agent n's target mixes the round's soft
predictions with weights cos(s_m, s_n) - min_m' cos(s_m', s_n), normalised over m (self
included), recomputed every round from the predictions alone; nothing is learned."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from coordinator.strategies import ktpfl_math as km
from coordinator.strategies.soft_targets import SoftTargetStrategy


class SimPFL(SoftTargetStrategy):
    name = "sim-pfl"

    def targets(self, round_: int, soft: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = list(soft)
        stacked = km.as_distributions(np.stack([soft[a] for a in ids]))
        t = km.mixture(km.sim_weights(stacked), stacked)
        return {a: t[i] for i, a in enumerate(ids)}

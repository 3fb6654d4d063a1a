"""Sim-pFL (baseline of the KT-pFL paper): agent n's target mixes the round's soft
predictions with weights cos(s_m, s_n) - min_m' cos(s_m', s_n), normalised over m (self
included), recomputed every round from the predictions alone; nothing is learned."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coordinator.strategies import ktpfl_math as km
from coordinator.strategies.soft_targets import WeightedTargets


class SimPFL(WeightedTargets):
    name = "sim-pfl"

    def weights(self, ids: Sequence[str], soft: np.ndarray) -> np.ndarray:
        return km.sim_weights(soft)

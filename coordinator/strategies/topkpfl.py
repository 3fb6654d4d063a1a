"""TopK-pFL (baseline of the KT-pFL paper): agent n's target is the uniform average of
the soft predictions of itself and the topk_k - 1 other agents whose flattened
predictions have the largest cosine similarity to its own (K = 5 as in the paper; the
authors' code instead keeps the top half)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from coordinator.strategies import ktpfl_math as km
from coordinator.strategies.base import RunContext
from coordinator.strategies.soft_targets import WeightedTargets
from pfl_edge.values import Scalar


class TopKPFL(WeightedTargets):
    name = "topk-pfl"
    params: ClassVar[dict[str, Scalar]] = {"topk_k": 5}

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.k = int(ctx.params["topk_k"])
        if self.k < 1:
            raise ValueError(f"topk_k must be >= 1, got {self.k}")

    def weights(self, ids: Sequence[str], soft: np.ndarray) -> np.ndarray:
        return km.topk_weights(soft, self.k)

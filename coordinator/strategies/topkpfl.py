"""TopK-pFL (baseline of the KT-pFL paper): agent n's target is the uniform average of
the soft predictions of itself and the topk_k - 1 other agents whose flattened
predictions have the largest cosine similarity to its own (K = 5 as in the paper; the
authors' code instead keeps the top half)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from coordinator.strategies import ktpfl_math as km
from coordinator.strategies.base import RunContext
from coordinator.strategies.soft_targets import SoftTargetStrategy
from pfl_edge.values import Scalar


class TopKPFL(SoftTargetStrategy):
    name = "topk-pfl"
    params: ClassVar[dict[str, Scalar]] = {"topk_k": 5}

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.k = int(ctx.params["topk_k"])
        if self.k < 1:
            raise ValueError(f"topk_k must be >= 1, got {self.k}")

    def targets(self, round_: int, soft: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = list(soft)
        stacked = km.as_distributions(np.stack([soft[a] for a in ids]))
        t = km.mixture(km.topk_weights(stacked, self.k), stacked)
        return {a: t[i] for i, a in enumerate(ids)}

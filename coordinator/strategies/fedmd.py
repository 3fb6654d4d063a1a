"""FedMD (Li & Wang 2019): every agent distils towards the uniform average of all
answering agents' soft predictions on the round's public batch."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from coordinator.strategies.soft_targets import SoftTargetStrategy


class FedMD(SoftTargetStrategy):
    name = "fedmd"

    def targets(self, round_: int, soft: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        consensus = np.mean(np.stack(list(soft.values())), axis=0)
        return {a: consensus for a in soft}

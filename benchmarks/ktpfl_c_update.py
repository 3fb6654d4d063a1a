"""Coordinator cost of KT-pFL's c step (issue 3 targets: N=100 under 100 ms, N=1000
under 5 s, with |D_r| = 3000 public samples and C = 10 classes).

Times `ktpfl_math.update_block` (one eq. (7) step plus the simplex projection) on
float32 soft predictions as they arrive from the wire, with every agent taking part;
also the forming of the N personalized targets. Median of several repeats.

    python -m benchmarks.ktpfl_c_update
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.strategies import ktpfl_math as km

RESULTS = Path(__file__).resolve().parent / "results"


def _median_s(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def measure(n: int, public: int, classes: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, public, classes)).astype(np.float32) * 3
    soft = km.as_distributions(np.exp(logits))
    sizes = rng.integers(50, 500, n).astype(np.float64)
    c = np.full((n, n), 1.0 / n)
    idx = np.arange(n)

    def step() -> object:
        return km.update_block(c, idx, soft, sizes, lr=0.5, lam=1.0, rho=0.5, projection="simplex")

    def targets() -> object:
        return km.mixture(km.block_weights(c, idx), soft)

    update_s, update_all = _median_s(step, repeats)
    targets_s, targets_all = _median_s(targets, repeats)
    return {
        "agents": n,
        "public_samples": public,
        "classes": classes,
        "repeats": repeats,
        "c_update_median_s": update_s,
        "c_update_all_s": update_all,
        "targets_median_s": targets_s,
        "targets_all_s": targets_all,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--public", type=int, default=3000, help="public samples |D_r|")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS / "ktpfl_c_update.json")
    args = ap.parse_args(argv)
    rows = []
    for n, repeats, target_s in ((100, 11, 0.1), (1000, 5, 5.0)):
        row = measure(n, args.public, args.classes, repeats)
        row["target_s"] = target_s
        row["met"] = row["c_update_median_s"] < target_s
        rows.append(row)
        print(
            f"N={n}: c update {1000 * row['c_update_median_s']:.1f} ms (target "
            f"{1000 * target_s:.0f} ms), targets {1000 * row['targets_median_s']:.1f} ms",
            flush=True,
        )
    machine = {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "results": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

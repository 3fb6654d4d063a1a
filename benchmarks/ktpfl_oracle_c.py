"""How far kt-pfl could get with a perfect c: Table 1's fleets distilling towards targets
mixed with weights taken from the agents' private label histograms (which a coordinator
never sees), fixed for the whole run. Issue 3 asks kt-pfl >= fedmd + 2 points in
`classes-2`; if the oracle cannot reach that either, the margin is not there to learn.

The oracle: w[m, n] (teacher m, student n, itself included) proportional to the cosine
similarity of m's and n's training label histograms. In `classes-2` that similarity is
1 for agents with the same two classes and 0 otherwise, so each student averages
uniformly over the agents with its class mix (`teachers_per_student` says how many).

Everything else (fleet, rounds, public samples, learner, wire) is taken from the
benchmarks.ktpfl_table1 table compared (`--table`), and the per-seed accuracies of its
methods are set beside the oracle's (`paired`), since seeds differ more than methods do.

    python -m benchmarks.ktpfl_oracle_c --seeds 1 2 3 4
    python -m benchmarks.ktpfl_table1 --quick && python -m benchmarks.ktpfl_oracle_c \
        --seeds 0 --table benchmarks/results/ktpfl_table1_quick.json --out /tmp/oracle.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchmarks import ktpfl_table1 as t1
from coordinator.sim.run import SimAgent
from coordinator.strategies import ktpfl_math as km
from coordinator.strategies.soft_targets import WeightedTargets
from pfl_edge.values import Scalar

ORACLE = "oracle-c"
LEARNER = "kt-pfl"


def oracle_weights(fleet: Sequence[SimAgent]) -> dict[tuple[str, str], float]:
    """w[(teacher, student)] before normalisation: label-histogram cosine similarity."""
    sim = t1.label_similarity(fleet)
    ids = [a.agent_id for a in fleet]
    return {(m, n): float(sim[i, j]) for i, m in enumerate(ids) for j, n in enumerate(ids)}


def oracle_strategy(w: dict[tuple[str, str], float]) -> type[WeightedTargets]:
    class Oracle(WeightedTargets):
        name = "oracle"
        params: ClassVar[dict[str, Scalar]] = {}

        def weights(self, ids: Sequence[str], soft: np.ndarray) -> np.ndarray:
            return km.normalise_columns(np.array([[w[(m, n)] for n in ids] for m in ids]))

    return Oracle


def run_job(noniid: str, seed: int, s: t1.Settings) -> dict[str, Any]:
    fleet = t1.make_fleet(noniid, seed, s)
    w = oracle_weights(fleet)
    job = t1.Job(LEARNER, noniid, "mnist", seed)
    started = time.perf_counter()
    report, result = t1.run_fleet(job, fleet, s, strategy=oracle_strategy(w))
    entry = t1.entry_of(job, report, result, time.perf_counter() - started)
    entry["algorithm"] = ORACLE
    mixes = np.array([[w[(m.agent_id, n.agent_id)] for n in fleet] for m in fleet])
    entry["teachers_per_student"] = float(np.mean((mixes > 1e-9).sum(axis=0)))
    return entry


def _run_job(args: tuple[str, int, t1.Settings]) -> dict[str, Any]:
    return run_job(*args)


def paired(results: Sequence[dict[str, Any]], table: dict[str, Any]) -> list[dict[str, Any]]:
    """Per setting and seed: the oracle's accuracy and those of Table 1's methods."""
    acc: dict[tuple[str, int], dict[str, float]] = {}
    for e in [*results, *[e for e in table["results"] if e["public"] == "mnist"]]:
        acc.setdefault((e["noniid"], e["seed"]), {})[e["algorithm"]] = e["final_mean_test_acc"]
    mine = {(e["noniid"], e["seed"]) for e in results}
    return [{"noniid": n, "seed": seed, **acc[(n, seed)]} for n, seed in sorted(mine)]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--noniid", nargs="+", choices=t1.NONIID, default=["classes-2"])
    ap.add_argument("--workers", type=int, default=2, help="parallel runs (one thread each)")
    ap.add_argument(
        "--table",
        type=Path,
        default=t1.RESULTS / "ktpfl_table1.json",
        help="the ktpfl_table1 results compared: their settings are used",
    )
    ap.add_argument("--out", type=Path, default=t1.RESULTS / "ktpfl_oracle_c.json")
    given = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(given)

    s, table = t1.settings_of(args.table)
    s.seeds = args.seeds
    jobs = [(n, seed, s) for n in args.noniid for seed in args.seeds]
    print(f"{len(jobs)} runs on {args.workers} workers", flush=True)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for i, entry in enumerate(pool.imap_unordered(_run_job, jobs), start=1):
            results.append(entry)
            print(
                f"done {i}/{len(jobs)}: {entry['algorithm']}/{entry['noniid']}/seed"
                f"{entry['seed']} acc {entry['final_mean_test_acc']:.4f}",
                flush=True,
            )
    results.sort(key=lambda e: (e["noniid"], e["algorithm"], e["seed"]))
    rows = paired(results, table)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(["python -m benchmarks.ktpfl_oracle_c", *given]),
                "settings": {**asdict(s), "learner": LEARNER},
                "table_compared": args.table.name,
                "paired": rows,
                "results": results,
                "wall_s": time.perf_counter() - started,
            },
            indent=1,
        )
        + "\n"
    )
    for row in rows:
        print(
            ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
            )
        )
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

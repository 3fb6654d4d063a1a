"""`pfl-edge sim`'s options into SimSettings, the run, and its summary."""

from __future__ import annotations

import argparse
import json
import sys

from coordinator.report import summary
from coordinator.sim.run import SimSettings, simulate
from pfl_edge.data.partition import PartitionSpec


def run_sim(args: argparse.Namespace) -> int:
    if args.agents < 1 or args.rounds < 1:
        raise ValueError("--agents and --rounds must be at least 1")
    if not 0.0 < args.sample_fraction <= 1.0:
        raise ValueError(f"--sample-fraction {args.sample_fraction}: must be in (0, 1]")
    settings = SimSettings(
        algorithm=args.algorithm,
        partition=PartitionSpec.from_args(args),
        rounds=args.rounds,
        models=tuple(m for m in args.models.split(",") if m),
        out=args.out,
        public_samples=args.public_samples,
        public_per_round=args.public_per_round,
        sample_fraction=args.sample_fraction,
        params={"local_epochs": args.local_epochs, "wire": args.wire},
        export_onnx=not args.no_export,
        threads=args.threads,
    )
    result = simulate(settings)
    print(summary(json.loads(result.report.read_text()), args.out))
    for error in result.errors:
        print(f"pfl-edge sim: {error}", file=sys.stderr)
    return 1 if result.errors else 0

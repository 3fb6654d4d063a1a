"""pfl-coordinator: the cloud side."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from importlib import resources
from pathlib import Path

from coordinator import config, strategies
from pfl_edge import logs
from pfl_edge import params as run_params
from pfl_edge.values import Scalar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pfl-coordinator",
        description="Coordinator of a personalized federated learning run (gRPC and MQTT).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a run until it finishes, then write its report")
    serve.add_argument("--config", type=Path, required=True, help="run configuration (TOML)")
    serve.add_argument(
        "--report-dir",
        type=Path,
        help="where report.json/png and the per-round inspection files (inspect/, "
        "*_heatmap.png) go (default: the run's state_dir)",
    )
    serve.add_argument("--log-level", default="INFO")
    sub.add_parser("example-config", help="print a commented configuration with the defaults")
    algos = sub.add_parser("algorithms", help="list algorithms and their parameters")
    algos.add_argument("--params", metavar="NAME", help="show the parameters of one algorithm")
    args = parser.parse_args(argv)

    if args.command == "example-config":
        print(resources.files("coordinator").joinpath("example.toml").read_text(), end="")
        return 0
    if args.command == "algorithms":
        return _algorithms(args.params)
    logs.setup(args.log_level, "coordinator")
    try:
        cfg = config.load(args.config)
        from coordinator.service import serve as run

        path = run(cfg, args.report_dir)
    except (config.ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"pfl-coordinator: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


def _algorithms(name: str | None) -> int:
    found = strategies.available()
    if name is None:
        for algo, cls in sorted(found.items()):
            doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
            print(f"{algo:12s} {doc.splitlines()[0] if doc else ''}")
        return 0
    cls = strategies.get(name)
    for key, value in sorted({**run_params.COMMON, **cls.params}.items()):
        print(f"{key} = {_toml_value(value)}")
    return 0


def _toml_value(value: Scalar) -> str:
    """A parameter as a TOML value, ready to paste under [algorithm]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    return repr(value)


if __name__ == "__main__":
    sys.exit(main())

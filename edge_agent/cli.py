"""pfl-agent: the device side. `predict` needs only onnxruntime; nothing here imports
torch until `run` is chosen."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pfl_edge import logs

if TYPE_CHECKING:
    from pfl_edge.transport.credentials import Credentials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pfl-agent",
        description="Edge agent: trains its own model on private data, shares knowledge "
        "with the coordinator, exports the personalized model to ONNX.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="take part in a run until it finishes")
    run.add_argument(
        "--coordinator",
        required=True,
        help="grpc://HOST:PORT, mqtt://BROKER:PORT, or HOST:PORT (gRPC)",
    )
    run.add_argument("--model", required=True, help="architecture (pfl-agent models lists them)")
    run.add_argument(
        "--data",
        type=Path,
        required=True,
        help="private data .npz (x_train, y_train, x_test, y_test), e.g. from "
        "`pfl-edge data partition`",
    )
    run.add_argument("--agent-id", default=socket.gethostname(), help="default: the host name")
    run.add_argument("--run-id", default="default", help="run name (MQTT topics)")
    tls = run.add_argument_group(
        "TLS, both transports (pfl-edge certs add AGENT_ID writes these files)"
    )
    tls.add_argument(
        "--tls-ca", help="CA file that signed the coordinator's or broker's certificate (TLS on)"
    )
    tls.add_argument(
        "--tls-cert",
        help="this agent's certificate (mutual TLS, with --tls-key); its common name must be "
        "the --agent-id",
    )
    tls.add_argument("--tls-key", help="key of --tls-cert")
    mqtt = run.add_argument_group("MQTT broker login (deploy/mosquitto/README.md)")
    mqtt.add_argument("--mqtt-username", help="default with a password: the agent id")
    mqtt.add_argument("--mqtt-password-file", help="file whose first line is the password")
    run.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="where model.onnx and the state saved after each round go",
    )
    run.add_argument(
        "--save-state",
        choices=("full", "model", "off"),
        default="full",
        help="what is saved after each round for a restart: full (model, optimizers, random "
        "state; with Adam about 3x the parameters), model (no optimizers: fewer flash writes, "
        "a restart's optimizers start fresh), off (nothing saved or restored)",
    )
    run.add_argument("--cache-dir", type=Path, help="public-set cache (default ~/.cache/pfl-edge)")
    run.add_argument("--num-classes", type=int, default=10)
    run.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--give-up-after",
        type=float,
        default=600.0,
        metavar="S",
        help="stop retrying after S seconds without the coordinator",
    )
    run.add_argument(
        "--keepalive",
        type=float,
        default=60.0,
        metavar="S",
        help="gRPC: ping an idle link every S seconds; a link that stays silent (a dead "
        "network path) is noticed and re-dialled within about 2 x S (default 60)",
    )
    run.add_argument("--log-level", default="INFO")

    predict = sub.add_parser("predict", help="classify inputs with model.onnx (onnxruntime only)")
    sub.add_parser("models", help="list the model architectures")

    from edge_agent.predict import add_predict_arguments, main_predict

    add_predict_arguments(predict)
    args = parser.parse_args(argv)
    if args.command == "predict":
        return main_predict(args)
    if args.command == "models":
        from edge_agent.models import MODELS

        print("\n".join(sorted(MODELS)))
        return 0
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level, args.agent_id)
    try:
        credentials = _credentials(args)
    except ValueError as exc:
        print(f"pfl-agent: {exc}", file=sys.stderr)
        return 2
    from edge_agent.runtime import Agent, AgentOptions, AgentStopped
    from pfl_edge.transport.base import TransportClosed

    opts = AgentOptions(
        agent_id=args.agent_id,
        coordinator=args.coordinator,
        model=args.model,
        data=args.data,
        out_dir=args.out,
        run_id=args.run_id,
        credentials=credentials,
        cache_dir=args.cache_dir,
        num_classes=args.num_classes,
        seed=args.seed,
        threads=args.threads,
        give_up_after_s=args.give_up_after,
        keepalive_s=args.keepalive,
        save_state=args.save_state,
    )
    try:
        final = Agent(opts).run()
    except (AgentStopped, TransportClosed, ValueError, FileNotFoundError) as exc:
        print(f"pfl-agent: {exc}", file=sys.stderr)
        return 2
    if final:
        print(
            f"final test accuracy {final['final_test_acc']:.4f}, model: "
            f"{args.out / 'model.onnx'} (onnx max abs diff {final['onnx_max_abs_diff']:.2e})"
        )
    return 0


_BROKER_OPTIONS = ("mqtt_username", "mqtt_password_file")


def _credentials(args: argparse.Namespace) -> Credentials:
    """TLS files of --tls-*, broker login of --mqtt-*; ValueError says what is wrong."""
    from pfl_edge.transport.credentials import load_credentials
    from pfl_edge.transport.factory import parse

    given = [f"--{k.replace('_', '-')}" for k in _BROKER_OPTIONS if getattr(args, k) is not None]
    if given and parse(args.coordinator).scheme != "mqtt":
        raise ValueError(f"{', '.join(given)}: only for an mqtt:// --coordinator")
    return load_credentials(
        username=args.mqtt_username,
        password_file=args.mqtt_password_file,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


if __name__ == "__main__":
    sys.exit(main())

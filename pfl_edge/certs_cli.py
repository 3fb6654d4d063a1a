"""`pfl-edge certs ...`: the command line of pfl_edge.certs (imported only when run, so
the other commands need no `cryptography`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = sub.add_parser(
        "certs",
        help="make a fleet CA, certificates and broker accounts",
        description="One folder holds a fleet: its CA, the coordinator's and broker's "
        "certificates, the registry of agents the coordinator admits (fleet.toml), one folder "
        "per agent with what its device needs (agents/<id>/), and the broker's password file "
        "and ACL (mosquitto/). Run it on an operator's machine: ca.key signs every agent.",
    )
    csub = certs.add_subparsers(dest="certs_command", required=True)
    init = csub.add_parser("init", help="create the CA, coordinator and broker certificates")
    init.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name or IP address agents use to reach the coordinator and the broker "
        "(repeat for several)",
    )
    init.add_argument(
        "--no-loopback",
        action="store_true",
        help="leave localhost and 127.0.0.1 out of the certificates",
    )
    add = csub.add_parser(
        "add", help="issue an agent its certificate and broker password, and register it"
    )
    remove = csub.add_parser(
        "remove", help="remove an agent: registry (its live link is closed), certificate, account"
    )
    for p in (add, remove):
        p.add_argument("agent_id", help="the agent's id (its certificate's common name)")
    listing = csub.add_parser("list", help="list the registered agents")
    for p in (init, add, remove, listing):
        p.add_argument("--dir", type=Path, required=True, help="the fleet folder")
    for p in (init, add):
        p.add_argument("--days", type=int, default=825, help="validity of new certificates (825)")


def run(args: argparse.Namespace) -> int:
    """Run a parsed `pfl-edge certs` command; ValueError says what went wrong (a file that
    cannot be written, a missing `cryptography`) for pfl_edge.cli to print."""
    try:
        return _run(args)
    except ModuleNotFoundError as exc:
        if exc.name != "cryptography":
            raise
        raise ValueError(
            "pfl-edge certs needs the cryptography package: pip install 'pfl-edge[coordinator]'"
        ) from None
    except OSError as exc:
        raise ValueError(f"{exc.filename or args.dir}: {exc.strerror or exc}") from None


def _run(args: argparse.Namespace) -> int:
    from pfl_edge import certs, fleet

    folder: Path = args.dir
    if args.certs_command == "init":
        certs.init_fleet(folder, args.host, days=args.days, loopback=not args.no_loopback)
        print(f"fleet CA and certificates in {folder}; add agents with `pfl-edge certs add ID`")
    elif args.certs_command == "add":
        out = certs.add_agent(folder, args.agent_id, days=args.days)
        print(
            f"{args.agent_id}: copy {out} to the device (agent.crt, agent.key, ca.crt, "
            "mqtt-password); reload the broker for MQTT"
        )
    elif args.certs_command == "remove":
        certs.remove_agent(folder, args.agent_id)
        print(f"{args.agent_id} removed; reload the broker for MQTT")
    else:
        for m in fleet.load(folder / "fleet.toml").members.values():
            print(f"{m.agent_id}\t{m.cert_sha256}\t{m.added}")
    return 0

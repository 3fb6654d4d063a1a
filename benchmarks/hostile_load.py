"""The coordinator's memory and connections under hostile load, on loopback.

A real coordinator (`python -m coordinator.cli serve --config ...`, a child process, one
per server mode) is attacked from this process by the raw client of tests/rawproto.py:
message classes compiled from proto/ at run time, bare gRPC streams, nothing of
pfl_edge's framing or transports. The coordinator's resident memory is VmRSS of
/proc/<pid>/status, sampled every 50 ms (with its open descriptors and CPU time): settled
before a scenario, the peak during it, and `--settle-s` after it ended.

Server modes (register_timeout_s, transfer_timeout_s, max_connections small; see --help):
  plaintext-open   plaintext on loopback, no fleet registry: anyone may register, only
                   register_rate bounds them (the worst case)
  plaintext-fleet  plaintext on loopback with fleet.toml: only member ids register
  mtls-fleet       mutual TLS with a fleet made by pfl_edge.certs, and its fleet.toml

Scenarios:
  pre_register_flood  2 streams, each opening 4 transfers of 256 MiB and sending every
                      chunk but the last (the old server grew from 114 MB to 2,185 MB);
                      on mutual TLS the attacker has no certificate
  registered_hold     plaintext-open only: each of the 2 streams first registers an
                      invented id, then opens one 256 MiB transfer one chunk short and
                      holds it: what a registered stranger may pin (max_message_bytes
                      per stream) until transfer_timeout_s
  silent_sockets      --silent TCP connections that never send a byte, held past the
                      handshake timeout: how many the server closes by itself, and when
  silent_streams      --silent-streams gRPC streams (own connections) that never send a
                      frame: closed after register_timeout_s? those above
                      --max-connections refused at once? (mutual TLS: a member's
                      certificate that never registers)
  register_flood      --flood-threads threads sending Registers with invented ids for
                      --flood-seconds (at most --flood-max): accepted vs refused by status
                      (mutual TLS: a member's certificate claiming other ids)

Every loop is bounded in count and time; the coordinators are stopped at the end.
Writes benchmarks/results/hostile_load.json. Run from the repository root:

    python -m benchmarks.hostile_load [--modes plaintext-open mtls-fleet] [--silent 1000]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import platform
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from pfl_edge import certs
from pfl_edge.netproxy import free_port
from tests import rawproto as rp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "hostile_load.json"
MiB = 1 << 20
MB = 1_000_000
SAMPLE_S = 0.05
MEMBER = "member-0"
"""The fleet's one registered agent (mutual TLS: the certificate a stranger has stolen)."""


@dataclass(frozen=True)
class Mode:
    name: str
    tls: bool
    fleet: bool
    scenarios: tuple[str, ...]


MODES = {
    m.name: m
    for m in (
        Mode(
            "plaintext-open",
            tls=False,
            fleet=False,
            scenarios=(
                "pre_register_flood",
                "registered_hold",
                "silent_sockets",
                "silent_streams",
                "register_flood",
            ),
        ),
        Mode("plaintext-fleet", tls=False, fleet=True, scenarios=("register_flood",)),
        Mode(
            "mtls-fleet",
            tls=True,
            fleet=True,
            scenarios=("pre_register_flood", "silent_sockets", "silent_streams", "register_flood"),
        ),
    )
}


# The coordinator under test.


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (bytes) and Threads of a process."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
        elif key == "Threads":
            out[key] = int(value)
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _toml(tables: dict[str, dict[str, object]]) -> str:
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Coordinator:
    """A `pfl-coordinator serve` child process and what can be read of it."""

    proc: subprocess.Popen[bytes]
    port: int
    folder: Path
    """Its state_dir (the store), config and log."""
    log: Path
    settings: dict[str, object]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def sample(self) -> dict[str, float]:
        status = _proc_status(self.proc.pid)
        return {
            "rss": status["VmRSS"],
            "fds": len(os.listdir(f"/proc/{self.proc.pid}/fd")),
            "threads": status["Threads"],
            "cpu_s": _cpu_s(self.proc.pid),
        }

    def log_bytes(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> dict[str, int]:
        """What the coordinator logged after byte `offset` of its log."""
        with self.log.open("rb") as f:
            f.seek(offset)
            lines = f.read().splitlines()
        return {
            "bytes": sum(len(line) + 1 for line in lines),
            "lines": len(lines),
            "warnings": sum(b" WARNING " in line for line in lines),
        }

    def state_bytes(self) -> int:
        """Bytes on disk in its state directory (the store), the log left out."""
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file()) - (
            self.log_bytes()
        )


@contextlib.contextmanager
def coordinator(
    mode: Mode, tmp: Path, fleet_dir: Path, args: argparse.Namespace
) -> Iterator[Coordinator]:
    """Start a coordinator for `mode`; stop it (SIGTERM, then SIGKILL) on leaving."""
    folder = tmp / mode.name
    folder.mkdir()
    public = folder / "public.npz"
    np.savez(public, x=np.zeros((10, *rp.SAMPLE_SHAPE), np.uint8))
    port = free_port()
    server: dict[str, object] = {
        "grpc": f"127.0.0.1:{port}",
        "http": "",
        "register_timeout_s": args.register_timeout_s,
        "transfer_timeout_s": args.transfer_timeout_s,
        "register_rate": args.register_rate,
        "max_connections": args.max_connections,
        "max_inflight_bytes": args.max_inflight_mb << 20,
    }
    if mode.tls:
        server |= {
            "grpc_tls_cert": str(fleet_dir / "coordinator.crt"),
            "grpc_tls_key": str(fleet_dir / "coordinator.key"),
            "grpc_tls_client_ca": str(fleet_dir / "ca.crt"),
        }
    if mode.fleet:
        server["fleet"] = str(fleet_dir / "fleet.toml")
    config = folder / "run.toml"
    config.write_text(
        _toml(
            {
                # No round starts: min_agents is more than any flood registers.
                "run": {"id": "hostile", "min_agents": 1_000_000, "state_dir": str(folder)},
                "public": {"dataset": str(public), "samples": 10, "per_round": 5},
                "server": server,
            }
        )
    )
    log = folder / "coordinator.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while b"serving grpc://" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coordinator did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Coordinator(proc, port, folder, log, server)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Sampler:
    """Samples a coordinator every SAMPLE_S seconds in a thread, keeping the peaks."""

    def __init__(self, coord: Coordinator) -> None:
        self._coord = coord
        self.peak: dict[str, float] = coord.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            with contextlib.suppress(OSError):
                now = self._coord.sample()
                self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def measured(
    coord: Coordinator, settle_s: float, attack: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run `attack` with the coordinator sampled; its result with the memory, descriptor,
    thread and CPU figures of before (settled), peak and after (`settle_s` later)."""
    time.sleep(settle_s)
    before, log_before, state_before = coord.sample(), coord.log_bytes(), coord.state_bytes()
    sampler = Sampler(coord)
    start = time.monotonic()
    try:
        result = attack()
    finally:
        attack_s = time.monotonic() - start
        time.sleep(settle_s)
        sampler.stop()
    after = coord.sample()
    peak = sampler.peak
    figures: dict[str, Any] = {
        "attack_s": round(attack_s, 2),
        "rss_mb": {
            "before": before["rss"] / MB,
            "peak": peak["rss"] / MB,
            "after": after["rss"] / MB,
            "growth_at_peak": (peak["rss"] - before["rss"]) / MB,
            "growth_after": (after["rss"] - before["rss"]) / MB,
        },
        "open_fds": {"before": before["fds"], "peak": peak["fds"], "after": after["fds"]},
        "threads": {
            "before": before["threads"],
            "peak": peak["threads"],
            "after": after["threads"],
        },
        "server_cpu_s": round(after["cpu_s"] - before["cpu_s"], 2),
        "server_log": coord.log_since(log_before),
        "state_dir_growth_bytes": coord.state_bytes() - state_before,
    }
    rss = figures["rss_mb"]
    print(
        f"    RSS {rss['before']:.0f} -> peak {rss['peak']:.0f} -> {rss['after']:.0f} MB, "
        f"fds {before['fds']} -> {peak['fds']:.0f} -> {after['fds']}, "
        f"server CPU {figures['server_cpu_s']} s",
        file=sys.stderr,
        flush=True,
    )
    return {**result, **figures}


# Attacks.


def _status_key(code: grpc.StatusCode | None, details: str) -> str:
    """A refusal's code and reason with names and numbers taken out (for counting)."""
    reason = re.sub(r"'[^']*'|\"[^\"]*\"|\d+(\.\d+)?", "_", details)[:90]
    return f"{code.name if code else 'OPEN'}: {reason}"


def _status(client: rp.RawClient, timeout: float) -> tuple[grpc.StatusCode | None, str]:
    try:
        return client.status(timeout)
    except AssertionError:  # still open
        return None, ""


@dataclass
class _Counted:
    """Frames as gRPC takes them, counted."""

    frames: Iterator[Any]
    taken: int = 0

    def __iter__(self) -> Iterator[Any]:
        for frame in self.frames:
            self.taken += 1
            yield frame


def transfer_frames(
    transfers: int, blob_bytes: int, chunk_bytes: int, first_id: int
) -> Iterator[Any]:
    """`transfers` heads of one blob each, every chunk but the blob's last after each."""
    data = bytes(chunk_bytes)
    for transfer_id in range(first_id, first_id + transfers):
        yield rp.head(transfer_id, [blob_bytes], chunk_bytes)
        for index in range(blob_bytes // chunk_bytes - 1):
            yield rp.chunk(transfer_id, 1, index, data)


def transfer_flood(
    target: str,
    tls: rp.ClientTls | None,
    *,
    streams: int,
    transfers: int,
    blob_bytes: int,
    chunk_bytes: int,
    register_as: str | None,
    wait_s: float,
) -> dict[str, Any]:
    """`streams` streams each sending `transfer_frames` (after a Register of
    `register_as`-<n> if given), then waiting up to `wait_s` for the server to end them."""
    clients, counted, registered = [], [], []
    start = time.monotonic()
    for n in range(streams):
        client = rp.RawClient(target, tls)
        clients.append(client)
        if register_as is not None:
            client.send(rp.register(f"{register_as}-{n}"))
            frame = client.recv(10)
            registered.append(frame is not None and frame.envelope.HasField("run_config"))
        frames = _Counted(transfer_frames(transfers, blob_bytes, chunk_bytes, 1 + 10 * n))
        counted.append(frames)
        client.send_all(frames)
    outcome: list[dict[str, Any]] = []
    for client, frames in zip(clients, counted, strict=True):
        code, details = _status(client, max(0.1, start + wait_s - time.monotonic()))
        outcome.append(
            {
                "status": code.name if code else "still open",
                "details": details,
                "ended_after_s": round(time.monotonic() - start, 2) if code else None,
                "frames_taken_by_grpc": frames.taken,
            }
        )
        client.close()
    for o in outcome:
        print(
            f"    stream ended {o['status']} after {o['frames_taken_by_grpc']} frames: "
            f"{o['details'][:100]}",
            file=sys.stderr,
            flush=True,
        )
    result: dict[str, Any] = {
        "streams": streams,
        "transfers_per_stream": transfers,
        "blob_bytes": blob_bytes,
        "chunk_bytes": chunk_bytes,
        "chunks_sent_per_transfer_at_most": blob_bytes // chunk_bytes - 1,
        "attacker_certificate": tls is not None and tls.chain is not None,
        "outcome": outcome,
    }
    if register_as is not None:
        result["registered"] = registered
    return result


def silent_sockets(port: int, count: int, hold_s: float) -> dict[str, Any]:
    """`count` TCP connections that send nothing, watched for `hold_s`: which the server
    closed (EOF or reset), and when after connecting; bytes it sent before."""
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    received = 0
    refused_connects = 0
    for _ in range(count):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            refused_connects += 1
            s.close()
            continue
        s.setblocking(False)
        opened[s] = time.monotonic()
        sel.register(s, selectors.EVENT_READ)
    print(
        f"    {len(opened)} sockets connected ({refused_connects} not), holding {hold_s:g} s",
        file=sys.stderr,
        flush=True,
    )
    closed_after: list[float] = []
    end = time.monotonic() + hold_s
    while len(closed_after) < len(opened) and (left := end - time.monotonic()) > 0:
        for key, _ in sel.select(min(left, 0.5)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            received += len(data)
            if not data:
                closed_after.append(time.monotonic() - opened[sock])
                sel.unregister(sock)
    held = time.monotonic() - min(opened.values(), default=time.monotonic())
    for s in opened:
        s.close()
    sel.close()
    print(
        f"    server closed {len(closed_after)} of {len(opened)} within {held:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return {
        "connections": len(opened),
        "connect_failures": refused_connects,
        "held_s": round(held, 2),
        "closed_by_server": len(closed_after),
        "closed_after_s": _spread(closed_after),
        "bytes_from_server": received,
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def silent_streams(
    target: str, tls: rp.ClientTls | None, count: int, hold_s: float
) -> dict[str, Any]:
    """`count` streams, each on its own connection, that never send a frame: how they
    ended (status), and when after each was opened."""
    start = time.monotonic()
    opened: list[tuple[rp.RawClient, float]] = []
    for _ in range(count):
        opened.append((rp.RawClient(target, tls), time.monotonic()))
    ended: dict[int, float] = {}
    while len(ended) < count and time.monotonic() - start < hold_s:
        for i, (c, t) in enumerate(opened):
            if i not in ended and c.ended:
                ended[i] = time.monotonic() - t
        time.sleep(0.05)
    after: dict[str, list[float]] = collections.defaultdict(list)
    open_at_end = 0
    for i, (c, _) in enumerate(opened):
        code, details = _status(c, 0.01)
        if i in ended:
            after[_status_key(code, details)].append(ended[i])
        else:
            open_at_end += 1
        c.close()
    statuses = {key: {"streams": len(t), "ended_after_s": _spread(t)} for key, t in after.items()}
    print(
        f"    {len(ended)} of {count} silent streams ended within {hold_s:g} s: "
        + ", ".join(f"{v['streams']} {k}" for k, v in statuses.items()),
        file=sys.stderr,
        flush=True,
    )
    return {
        "streams": count,
        "held_s": round(time.monotonic() - start, 2),
        "ended_by_server": len(ended),
        "still_open": open_at_end,
        "by_status": statuses,
    }


@dataclass
class _Tally:
    accepted: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def attempts(self) -> int:
        return self.accepted + sum(self.refused.values())


def register_flood(
    target: str,
    tls: rp.ClientTls | None,
    *,
    threads: int,
    seconds: float,
    most: int,
    prefix: str,
) -> dict[str, Any]:
    """Registers of invented ids `prefix`-<thread>-<n>, each on a new stream and
    connection (a refusal ends the stream), from `threads` threads for `seconds`."""
    tally = _Tally()
    end = time.monotonic() + seconds

    def flood(t: int) -> None:
        n = 0
        while time.monotonic() < end:
            with tally.lock:
                if tally.attempts >= most:
                    return
            client = rp.RawClient(target, tls)
            client.send(rp.register(f"{prefix}-{t}-{n}"))
            frame = client.recv(10)
            accepted = frame is not None and frame.envelope.HasField("run_config")
            code, details = (None, "") if accepted else _status(client, 10)
            client.close()
            with tally.lock:
                if accepted:
                    tally.accepted += 1
                else:
                    key = _status_key(code, details)
                    tally.refused[key] += 1
                    tally.examples.setdefault(key, details)
            n += 1

    start = time.monotonic()
    workers = [threading.Thread(target=flood, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 30)
    took = time.monotonic() - start
    print(
        f"    {tally.attempts} registrations in {took:.1f} s: {tally.accepted} accepted, "
        f"refused {dict(tally.refused)}",
        file=sys.stderr,
        flush=True,
    )
    return {
        "attacker_threads": threads,
        "seconds": round(took, 2),
        "attempts": tally.attempts,
        "attempts_per_s": round(tally.attempts / took, 1),
        "accepted": tally.accepted,
        "accepted_per_s": round(tally.accepted / took, 1),
        "refused": sum(tally.refused.values()),
        "refused_by_reason": dict(tally.refused),
        "refusal_examples": tally.examples,
    }


# Driver.


def make_fleet(folder: Path) -> tuple[rp.ClientTls, rp.ClientTls]:
    """A fleet of one member in `folder` (pfl_edge.certs); returns (a stranger's TLS: the
    fleet CA, no certificate; the member's TLS)."""
    certs.init_fleet(folder, ["localhost"])
    member = rp.agent_tls(certs.add_agent(folder, MEMBER))
    return rp.ClientTls(member.root), member


def run_mode(
    mode: Mode,
    tmp: Path,
    fleet_dir: Path,
    tls: tuple[rp.ClientTls, rp.ClientTls],
    args: argparse.Namespace,
) -> dict[str, Any]:
    no_cert, with_cert = tls if mode.tls else (None, None)
    hold_s = 3 * args.register_timeout_s
    flood = functools.partial(transfer_flood, streams=2, blob_bytes=256 * MiB, chunk_bytes=MiB)
    attacks: dict[str, Callable[[Coordinator], dict[str, Any]]] = {
        "pre_register_flood": lambda c: flood(
            c.target, no_cert, transfers=4, register_as=None, wait_s=hold_s
        ),
        "registered_hold": lambda c: flood(
            c.target,
            None,
            transfers=1,
            register_as="stranger",
            wait_s=args.transfer_timeout_s + 10,
        ),
        "silent_sockets": lambda c: silent_sockets(c.port, args.silent, hold_s),
        "silent_streams": lambda c: silent_streams(
            c.target, with_cert, args.silent_streams, hold_s
        ),
        "register_flood": lambda c: register_flood(
            c.target,
            with_cert,
            threads=args.flood_threads,
            seconds=args.flood_seconds,
            most=args.flood_max,
            prefix=f"invented-{mode.name}",
        ),
    }
    print(f"mode {mode.name}:", file=sys.stderr, flush=True)
    with coordinator(mode, tmp, fleet_dir, args) as coord:
        out: dict[str, Any] = {
            "server_settings": coord.settings,
            "rss_mb_at_start": coord.sample()["rss"] / MB,
            "scenarios": {},
        }
        for name in mode.scenarios:
            print(f"  {name}:", file=sys.stderr, flush=True)
            attack = functools.partial(attacks[name], coord)
            out["scenarios"][name] = measured(coord, args.settle_s, attack)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--modes", nargs="+", choices=sorted(MODES), default=list(MODES), help="server modes"
    )
    parser.add_argument("--register-timeout-s", type=float, default=3.0)
    parser.add_argument(
        "--transfer-timeout-s",
        type=float,
        default=8.0,
        help="the server's; registered_hold waits for it",
    )
    parser.add_argument(
        "--register-rate", type=float, default=50.0, help="the server's (the default's)"
    )
    parser.add_argument(
        "--max-inflight-mb",
        type=int,
        default=256,
        help="the server's budget for incomplete transfers of all agents together, MiB "
        "(default 256, a quarter of the server's default: the registered hold then shows "
        "the budget refusing the second 256 MiB transfer)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=64,
        help="the server's concurrent streams (below --silent-streams: the extra are refused)",
    )
    parser.add_argument("--silent", type=int, default=1000, help="silent TCP connections")
    parser.add_argument(
        "--silent-streams", type=int, default=100, help="silent gRPC streams (connections)"
    )
    parser.add_argument("--flood-threads", type=int, default=4)
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    parser.add_argument(
        "--flood-max", type=int, default=20_000, help="registrations at most per flood"
    )
    parser.add_argument(
        "--settle-s", type=float, default=2.0, help="wait before and after each scenario"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    started, load = time.time(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        fleet_dir = Path(tmp) / "fleet"
        tls = make_fleet(fleet_dir)
        modes = {
            name: run_mode(MODES[name], Path(tmp), fleet_dir, tls, args) for name in args.modes
        }
    result = {
        "command": "python -m benchmarks.hostile_load " + " ".join(sys.argv[1:]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "load_average_at_start": load,
        },
        "wall_s": round(time.time() - started, 1),
        "modes": modes,
        "targets": {
            "pre_register_flood_rss_growth_mb_below": 64,
            "old_code_pre_register_flood_rss_mb": {"before": 114, "peak": 2185},
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())

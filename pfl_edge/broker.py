"""A local Mosquitto for the demo, tests and benchmarks: a generated config in a work
directory, a loopback port, persistence on (a restart keeps sessions and queued
messages). Needs the `mosquitto` binary (Debian: apt-get install mosquitto).

`plain_config` is anonymous and plaintext (transport tests); `secure_config` is the
deployed deploy/mosquitto/mosquitto.conf with a fleet directory's certificates, accounts
and ACL (`pfl_edge.certs`), so the demo and the security tests run what operators run.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from pfl_edge.netproxy import free_port
from pfl_edge.transport.mqtt_common import MAX_PACKET_BYTES

_SBIN = ("/usr/sbin", "/usr/local/sbin")

DEPLOY_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "mosquitto.conf"
"""The broker configuration operators deploy (in a source checkout)."""
_RELOADED = "Reloading config."


def find_tool(name: str) -> str | None:
    """Path of a tool; /usr/sbin (mosquitto's place) is often not on a user's PATH."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _SBIN:
        candidate = Path(folder) / name
        if candidate.is_file():
            return str(candidate)
    return None


def require_tool(name: str) -> str:
    """Path of a tool of Debian's mosquitto package; FileNotFoundError saying how to
    install it."""
    path = find_tool(name)
    if path is None:
        raise FileNotFoundError(
            f"{name} not found on PATH or in /usr/sbin: apt-get install mosquitto"
        )
    return path


class Broker:
    """One mosquitto process; started again, it keeps its port and persistence directory."""

    def __init__(self, workdir: Path, config: str | None = None, port: int | None = None) -> None:
        """`config` is a full config (its listener must be on `port`); default: `plain_config`
        on a free port."""
        self.binary = require_tool("mosquitto")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.config_path.write_text(config or plain_config(workdir, self.port))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> Broker:
        """Start mosquitto and wait until it accepts connections; raises RuntimeError."""
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._proc.returncode}:\n" + self.log_text()
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"mosquitto did not listen on port {self.port} within "
            f"{timeout_s:.0f} s:\n{self.log_text()}"
        )

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: mosquitto saves its persistence file)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def reload(self, timeout_s: float = 10.0) -> None:
        """Make mosquitto re-read its password and ACL files (SIGHUP, as `systemctl reload
        mosquitto` does; its clients stay connected) and wait until it has: it logs
        "Reloading config." and reloads before it serves the next network event. Needs an
        information log type (both configs here log everything); raises RuntimeError."""
        if self._proc is None:
            raise RuntimeError("mosquitto is not running")
        before = self.log_text().count(_RELOADED)
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while self.log_text().count(_RELOADED) == before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not reload within {timeout_s:.0f} s")
            time.sleep(0.02)

    def restart(self, down_s: float = 0.0) -> Broker:
        """Stop, stay down `down_s` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        return self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def plain_config(workdir: Path, port: int) -> str:
    """Anonymous loopback listener, persistence in `workdir`, every log type."""
    # mosquitto started as root switches to `user`, which must be able to write workdir.
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {workdir}/",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "set_tcp_nodelay true",
        f"log_dest file {workdir / 'mosquitto.log'}",
        "log_type all",
        f"user {getpass.getuser()}",
    ]
    return "\n".join(lines) + "\n"


_TLS_KEYS = ("cafile", "certfile", "keyfile", "crlfile", "tls_version")
_CERT_KEYS = ("require_certificate", "use_identity_as_username")


def secure_config(
    workdir: Path,
    port: int,
    fleet: Path,
    *,
    tls: bool = True,
    require_certificate: bool = True,
    template: Path = DEPLOY_CONFIG,
) -> str:
    """deploy/mosquitto/mosquitto.conf (`template`) on a loopback `port`, persistence and
    log in `workdir`, with the fleet directory's files (`pfl_edge.certs`): broker.crt,
    broker.key, ca.crt and ca.crl for TLS, mosquitto/passwd and mosquitto/acl for who may log in
    and what each account may use.

    `require_certificate`: mutual TLS, the certificate's common name is the username (as
    deployed); off, clients log in with the passwords of mosquitto/passwd over TLS.
    `tls` off (the demo's --insecure): no TLS at all (so no certificate to require),
    passwords and ACL still; the client id stays tied to the username in every mode.
    ValueError where the template lacks a line this replaces; FileNotFoundError without a
    source checkout's deploy/ folder.
    """
    if not template.is_file():
        raise FileNotFoundError(
            f"{template} not found: the broker configuration comes from deploy/mosquitto/ "
            "of a source checkout (pip install -e)"
        )
    values: dict[str, str | None] = {
        "listener": f"{port} 127.0.0.1",
        "cafile": str(fleet / "ca.crt"),
        "certfile": str(fleet / "broker.crt"),
        "keyfile": str(fleet / "broker.key"),
        "crlfile": str(fleet / "ca.crl"),
        "tls_version": "tlsv1.2",
        "require_certificate": str(require_certificate).lower(),
        "use_identity_as_username": str(require_certificate).lower(),
        "use_username_as_clientid": "true",
        "allow_anonymous": "false",
        "password_file": str(fleet / "mosquitto" / "passwd"),
        "acl_file": str(fleet / "mosquitto" / "acl"),
        "persistence_location": f"{workdir}/",
        "log_dest": f"file {workdir / 'mosquitto.log'}",
    }
    if not tls:
        values.update(dict.fromkeys(_TLS_KEYS + _CERT_KEYS))
    lines, seen = [], set()
    for line in template.read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key in values:
            seen.add(key)
            value = values[key]
            if value is None:
                continue
            line = f"{key} {value}"
        lines.append(line)
    missing = sorted(set(values) - seen)
    if missing:
        raise ValueError(f"{template} has no {', '.join(missing)} line")
    # mosquitto started as root switches to `user`, which must be able to write workdir.
    lines += ["log_type all", f"user {getpass.getuser()}"]
    return "\n".join(lines) + "\n"

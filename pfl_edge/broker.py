"""A local Mosquitto for the demo, tests and benchmarks: a generated config in a work
directory, a loopback port, persistence on (a restart keeps sessions and queued
messages). Needs the `mosquitto` binary (Debian: apt-get install mosquitto)."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

from pfl_edge.netproxy import free_port
from pfl_edge.transport.mqtt_common import MAX_PACKET_BYTES

_SBIN = ("/usr/sbin", "/usr/local/sbin")


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
    """Path of a tool; FileNotFoundError saying how to install it."""
    path = find_tool(name)
    if path is None:
        package = "openssl" if name == "openssl" else "mosquitto"
        raise FileNotFoundError(
            f"{name} not found on PATH or in /usr/sbin: apt-get install {package}"
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

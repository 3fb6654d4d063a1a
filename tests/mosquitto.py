"""The real Mosquitto broker for tests and benchmarks: a generated config in a work
directory, a free loopback port, persistence on (a restart keeps sessions and queues).
`secure_config` turns deploy/mosquitto/mosquitto.conf into a test config, with the
deploy ACL file itself, so what operators deploy is what the tests exercise."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pfl_edge.netproxy import free_port
from pfl_edge.transport.mqtt_common import MAX_PACKET_BYTES, TlsFiles

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
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
    """Path of a tool the MQTT tests need; FileNotFoundError saying how to install it."""
    path = find_tool(name)
    if path is None:
        package = "openssl" if name == "openssl" else "mosquitto"
        raise FileNotFoundError(
            f"{name} not found; the MQTT tests need it: apt-get install {package}"
        )
    return path


class Broker:
    """One mosquitto process; started again, it keeps its port and persistence directory."""

    def __init__(self, workdir: Path, config: str | None = None, port: int | None = None) -> None:
        """`config` is a full config (its listener must be on `port`); default: plain."""
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

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _common(workdir: Path) -> str:
    # mosquitto started as root switches to `user`, which must be able to write workdir.
    lines = [
        "persistence true",
        f"persistence_location {workdir}/",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "set_tcp_nodelay true",
        f"log_dest file {workdir / 'mosquitto.log'}",
        "log_type all",
        f"user {getpass.getuser()}",
    ]
    return "\n".join(lines) + "\n"


def plain_config(workdir: Path, port: int) -> str:
    """Anonymous loopback listener, persistence on."""
    return f"listener {port} 127.0.0.1\nallow_anonymous true\n" + _common(workdir)


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_tls(self, mutual: bool = False) -> TlsFiles:
        if mutual:
            return TlsFiles(str(self.ca), str(self.client_cert), str(self.client_key))
        return TlsFiles(str(self.ca))


def make_certs(folder: Path) -> Certs:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (EC P-256)."""
    openssl = require_tool("openssl")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    run(
        "req",
        "-x509",
        *key,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=pfl-edge test CA",
    )
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=agent-a")):
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        ext = ("-extfile", "server.ext") if name == "server" else ()
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            *ext,
        )
    return Certs(
        folder / "ca.crt",
        folder / "server.crt",
        folder / "server.key",
        folder / "client.crt",
        folder / "client.key",
    )


def write_passwords(path: Path, passwords: dict[str, str]) -> Path:
    """A mosquitto password file, made by mosquitto_passwd as an operator would."""
    tool = require_tool("mosquitto_passwd")
    path.write_text("")
    for user, password in passwords.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
    return path


def secure_config(
    workdir: Path,
    port: int,
    certs: Certs,
    password_file: Path,
    *,
    require_certificate: bool = False,
) -> str:
    """deploy/mosquitto/mosquitto.conf with this test's port, files and directories."""
    values = {
        "listener": f"{port} 127.0.0.1",
        "cafile": str(certs.ca),
        "certfile": str(certs.server_cert),
        "keyfile": str(certs.server_key),
        "password_file": str(password_file),
        "acl_file": str(DEPLOY / "acl"),
        "persistence_location": f"{workdir}/",
        "log_dest": f"file {workdir / 'mosquitto.log'}",
        "require_certificate": str(require_certificate).lower(),
    }
    lines, seen = [], set()
    for line in (DEPLOY / "mosquitto.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key in values:
            seen.add(key)
            line = f"{key} {values[key]}"
        lines.append(line)
    missing = sorted(set(values) - seen)
    if missing:
        raise ValueError(f"deploy/mosquitto/mosquitto.conf has no {', '.join(missing)} line")
    lines.append(f"log_type all\nuser {getpass.getuser()}")
    return "\n".join(lines) + "\n"

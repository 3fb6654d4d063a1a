"""What the security tests add to pfl_edge.broker: throwaway certificates, a password
file, and `secure_config`, which turns deploy/mosquitto/mosquitto.conf into a test config
with the deploy ACL file itself, so what operators deploy is what the tests exercise."""

from __future__ import annotations

import getpass
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pfl_edge.broker import require_tool
from pfl_edge.transport.credentials import TlsFiles

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"


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

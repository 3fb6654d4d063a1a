"""`pfl-edge certs`: a fleet CA whose certificates verify, carry the names and usages TLS
checks, keep their keys private, and pass a real mutual-TLS handshake; the registry and
broker files follow every add and remove. (tests/test_mqtt_acl.py logs in to a real
mosquitto with the password file and ACL made here.)"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pfl_edge import certs, fleet


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "fleet"
    certs.init_fleet(out, ["coord.example", "10.1.2.3"])
    certs.add_agent(out, "jetson-01")
    return out


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_certificates_chain_to_the_ca_with_names_and_usages(folder: Path) -> None:
    ca = load(folder / "ca.crt")
    coord, agent = load(folder / "coordinator.crt"), load(folder / "agents/jetson-01/agent.crt")
    for cert in (coord, agent, load(folder / "broker.crt")):
        cert.verify_directly_issued_by(ca)
    assert (cn(coord), cn(agent)) == ("coordinator", "jetson-01")
    san = coord.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    eku = agent.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_keys_and_passwords_are_private(folder: Path) -> None:
    for path in (
        "ca.key",
        "coordinator.key",
        "agents/jetson-01/agent.key",
        "agents/jetson-01/mqtt-password",
        "mosquitto/passwd",
    ):
        assert stat.S_IMODE((folder / path).stat().st_mode) == 0o600, path
    assert stat.S_IMODE((folder / "ca.crt").stat().st_mode) == 0o644


def test_registry_holds_the_fingerprint_and_reissue_replaces_it(folder: Path) -> None:
    pem = (folder / "agents/jetson-01/agent.crt").read_bytes()
    der = load(folder / "agents/jetson-01/agent.crt").public_bytes(serialization.Encoding.DER)
    assert fleet.cert_sha256(pem) == hashlib.sha256(der).hexdigest()
    registry = fleet.load(folder / "fleet.toml")
    assert registry.admits("jetson-01", fleet.cert_sha256(pem)) is None
    certs.add_agent(folder, "jetson-01")  # re-issued: the old certificate is out
    registry = fleet.load(folder / "fleet.toml")
    assert "not the one registered" in (registry.admits("jetson-01", fleet.cert_sha256(pem)) or "")


def test_remove_drops_registry_entry_files_password_and_acl(folder: Path) -> None:
    certs.add_agent(folder, "pi-02")
    certs.remove_agent(folder, "jetson-01")
    assert sorted(fleet.load(folder / "fleet.toml").members) == ["pi-02"]
    assert not (folder / "agents/jetson-01").exists()
    users = [line.split(":")[0] for line in (folder / "mosquitto/passwd").read_text().splitlines()]
    assert users == ["coordinator", "pi-02"]
    acl = (folder / "mosquitto/acl").read_text()
    assert "jetson-01" not in acl and "topic write pfl/+/from/pi-02/#" in acl
    with pytest.raises(ValueError, match="not in the fleet registry"):
        certs.remove_agent(folder, "jetson-01")


def test_removed_and_reissued_certificates_are_on_the_crl(folder: Path) -> None:
    first = load(folder / "agents/jetson-01/agent.crt")
    crl = x509.load_pem_x509_crl((folder / "ca.crl").read_bytes())
    assert len(list(crl)) == 0 and crl.is_signature_valid(load(folder / "ca.crt").public_key())  # type: ignore[arg-type]
    certs.add_agent(folder, "jetson-01")
    second = load(folder / "agents/jetson-01/agent.crt")
    certs.remove_agent(folder, "jetson-01")
    crl = x509.load_pem_x509_crl((folder / "ca.crl").read_bytes())
    assert sorted(r.serial_number for r in crl) == sorted(
        [first.serial_number, second.serial_number]
    )


def test_password_hash_is_mosquittos_pbkdf2_sha512(folder: Path) -> None:
    line = (folder / "mosquitto/passwd").read_text().splitlines()[1]
    user, rest = line.split(":", 1)
    _, scheme, iterations, salt, digest = rest.split("$")
    password = (folder / "agents" / user / "mqtt-password").read_text().strip()
    want = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    assert (scheme, base64.b64decode(digest)) == ("7", want)


def test_mutual_tls_handshake_needs_an_agent_certificate(folder: Path) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=folder / "ca.crt")
    server_ctx.load_cert_chain(folder / "coordinator.crt", folder / "coordinator.key")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    peers: list[object] = []

    def serve() -> None:
        for _ in range(2):
            conn, _addr = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    peers.append(tls.getpeercert())
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError) as exc:
                peers.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    agent = folder / "agents/jetson-01"
    for with_cert in (True, False):
        ctx = ssl.create_default_context(cafile=agent / "ca.crt")
        if with_cert:
            ctx.load_cert_chain(agent / "agent.crt", agent / "agent.key")
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            try:
                got = tls.recv(2)
            except (ssl.SSLError, OSError):
                got = b""
        assert (got == b"ok") == with_cert
    thread.join(10)
    listener.close()
    assert isinstance(peers[0], dict) and "jetson-01" in str(peers[0]["subject"])
    assert isinstance(peers[1], ssl.SSLError)


def test_cli_init_add_list_remove(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "pfl_edge.cli", "certs", *args, "--dir", str(tmp_path / "f")]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    assert cli("init", "--host", "coord.example").returncode == 0
    assert cli("add", "dev-1").returncode == 0
    listed = cli("list")
    assert listed.returncode == 0 and listed.stdout.startswith("dev-1\t")
    bad = cli("add", "no/slash")
    assert bad.returncode == 2 and "pfl-edge: agent id 'no/slash' cannot be used" in bad.stderr
    again = cli("init", "--host", "x")
    assert again.returncode == 2 and "already holds a fleet CA" in again.stderr
    assert cli("remove", "dev-1").returncode == 0
    assert cli("list").stdout == ""


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[agents.a\n", "not valid TOML"),
        ("[users.a]\n", "unknown table"),
        ('[agents."a/b"]\ncert_sha256 = "' + "0" * 64 + '"\n', "cannot be used"),
        ('[agents.a]\ncert_sha256 = "xyz"\n', "64 lowercase hex"),
        ('[agents.a]\ncert_sha256 = "' + "0" * 64 + '"\nrole = "x"\n', "nothing else"),
    ],
)
def test_a_bad_registry_file_says_what_is_wrong(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        fleet.load(path)

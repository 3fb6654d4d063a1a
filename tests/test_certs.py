"""`pfl-edge certs`: a fleet CA whose certificates verify, carry the names and usages TLS
checks, keep their keys private, and pass a real mutual-TLS handshake; the registry and
broker files follow every add and remove. (tests/test_mqtt_acl.py logs in to a real
mosquitto with the password file and ACL made here.)"""

from __future__ import annotations

import base64
import hashlib
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


def san(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses (as text) of a certificate's subjectAltName."""
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return names.get_values_for_type(x509.DNSName), ips


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_certificates_chain_to_the_ca_with_names_and_usages(folder: Path) -> None:
    ca = load(folder / "ca.crt")
    coord, broker = load(folder / "coordinator.crt"), load(folder / "broker.crt")
    agent = load(folder / "agents/jetson-01/agent.crt")
    for cert in (coord, broker, agent):
        cert.verify_directly_issued_by(ca)
    assert (cn(ca), cn(coord), cn(broker), cn(agent)) == (
        "pfl-edge fleet CA",
        "coordinator",
        "broker",
        "jetson-01",
    )
    hosts = (["coord.example", "localhost"], ["10.1.2.3", "127.0.0.1"])
    assert san(coord) == san(broker) == hosts  # an address is an IP SAN, not a DNS name
    assert eku(coord) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert eku(broker) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert eku(agent) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not agent.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign


def test_no_loopback_leaves_localhost_out(tmp_path: Path) -> None:
    certs.init_fleet(tmp_path, ["coord.example"], loopback=False, days=30)
    coord = load(tmp_path / "coordinator.crt")
    assert san(coord) == (["coord.example"], [])
    validity = coord.not_valid_after_utc - coord.not_valid_before_utc
    assert 30 <= validity.days <= 31  # not_before is backdated a few minutes for clock skew


def test_init_and_add_refuse_what_would_go_wrong(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"already holds a fleet CA.*pfl-edge certs add"):
        certs.init_fleet(folder, ["other"])
    with pytest.raises(ValueError, match="--host"):
        certs.init_fleet(tmp_path / "empty", [], loopback=False)
    with pytest.raises(ValueError, match="the coordinator's broker account"):
        certs.add_agent(folder, "coordinator")
    with pytest.raises(ValueError, match="at least 1 day"):
        certs.add_agent(folder, "pi-02", days=0)
    with pytest.raises(ValueError, match=r"holds no fleet.*pfl-edge certs init"):
        certs.add_agent(tmp_path / "nothing", "pi-02")
    assert sorted(fleet.load(folder / "fleet.toml").members) == ["jetson-01"]


def test_keys_and_passwords_are_private(folder: Path) -> None:
    secrets = {
        "ca.key",
        "coordinator.key",
        "broker.key",
        "coordinator.mqtt-password",
        "agents/jetson-01/agent.key",
        "agents/jetson-01/mqtt-password",
        "mosquitto/passwd",
    }
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert secrets < files
    assert not [f for f in files if Path(f).name.startswith(".")]  # no temporary left
    for path in files:
        mode = stat.S_IMODE((folder / path).stat().st_mode)
        assert mode == (0o600 if path in secrets else 0o644), path


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
    """mosquitto_passwd's format: user:$7$101$<base64 12-byte salt>$<base64 64-byte hash>
    (tests/test_mqtt_acl.py logs in to a real mosquitto with these)."""
    files = {
        "coordinator": folder / "coordinator.mqtt-password",
        "jetson-01": folder / "agents/jetson-01/mqtt-password",
    }
    lines = (folder / "mosquitto/passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == list(files)
    for line in lines:
        user, rest = line.split(":", 1)
        empty, scheme, iterations, salt, digest = rest.split("$")
        password = files[user].read_text().splitlines()[0]
        want = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), 101)
        assert (empty, scheme, iterations) == ("", "7", "101")
        assert len(base64.b64decode(salt, validate=True)) == 12
        assert base64.b64decode(digest, validate=True) == want


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
    def cli(*args: str, folder: Path = tmp_path / "f") -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "pfl_edge.cli", "certs", *args, "--dir", str(folder)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    assert cli("init", "--host", "coord.example").returncode == 0
    added = cli("add", "dev-1")
    assert added.returncode == 0 and str(tmp_path / "f/agents/dev-1") in added.stdout
    listed = cli("list")
    fingerprint = fleet.cert_sha256((tmp_path / "f/agents/dev-1/agent.crt").read_bytes())
    assert listed.returncode == 0 and listed.stdout.startswith(f"dev-1\t{fingerprint}\t20")
    for args, message in (
        (("add", "no/slash"), "pfl-edge: agent id 'no/slash' cannot be used"),
        (("add", "dev-2", "--days", "0"), "pfl-edge: certificates must be valid for at least"),
        (("remove", "dev-9"), "pfl-edge: agent 'dev-9' is not in the fleet registry"),
        (("init", "--host", "x"), "pfl-edge: " + str(tmp_path / "f") + " already holds"),
    ):
        bad = cli(*args)
        assert (bad.returncode, bad.stdout) == (2, ""), args
        assert message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    (tmp_path / "file").write_text("")
    unwritable = cli("init", "--host", "x", folder=tmp_path / "file" / "fleet")
    assert unwritable.returncode == 2 and "Traceback" not in unwritable.stderr
    assert unwritable.stderr.startswith(f"pfl-edge: {tmp_path / 'file' / 'fleet'}: ")
    assert cli("remove", "dev-1").returncode == 0
    assert cli("list").stdout == ""
    assert not (tmp_path / "f/agents/dev-1").exists()


def test_cli_without_cryptography_says_what_to_install(tmp_path: Path) -> None:
    """Only `certs` needs it: the other commands parse and run without it."""
    script = (
        "import sys; sys.modules['cryptography'] = None\n"  # import cryptography now fails
        "from pfl_edge.cli import main\n"
        f"code = main(['certs', 'init', '--host', 'h', '--dir', {str(tmp_path)!r}])\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "pfl-edge: pfl-edge certs needs the cryptography package: pip install" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_ca_outlives_the_certificates_it_signs(tmp_path: Path) -> None:
    certs.init_fleet(tmp_path / "f", ["h"], days=30)
    certs.add_agent(tmp_path / "f", "a", days=9000)
    ca = load(tmp_path / "f" / "ca.crt")
    coordinator, agent = (
        load(tmp_path / "f" / "coordinator.crt"),
        load(tmp_path / "f/agents/a/agent.crt"),
    )
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= certs.CA_DAYS
    assert (coordinator.not_valid_after_utc - coordinator.not_valid_before_utc).days == 30
    assert agent.not_valid_after_utc == ca.not_valid_after_utc, "capped at the CA's expiry"

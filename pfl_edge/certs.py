"""`pfl-edge certs`: a fleet's PKI and broker accounts from one registry, on `cryptography`.

    <dir>/ca.crt, ca.key               the fleet CA (EC P-256); keep ca.key off the cloud host
    <dir>/coordinator.crt/.key         CN coordinator, the coordinator's host names: serves
                                       gRPC and logs in to the broker (mosquitto takes the CN
                                       as username with use_identity_as_username)
    <dir>/broker.crt/.key              CN broker, the same host names: mosquitto's certificate
    <dir>/coordinator.mqtt-password    the coordinator's broker password
    <dir>/fleet.toml                   the registry (pfl_edge.fleet): who may join
    <dir>/agents/<id>/                 agent.crt (CN = agent id), agent.key, ca.crt,
                                       mqtt-password: what one device needs, both transports
    <dir>/mosquitto/passwd, acl        the broker's accounts and topic rules for the members
    <dir>/ca.crl                       the certificates revoked by `remove` and re-issue: the
                                       broker checks it (mosquitto crlfile); the coordinator
                                       needs none, it admits the registered fingerprint only

Keys and passwords are written 0600, every file atomically. The mosquitto password file
is made here in mosquitto 2's own format (PBKDF2-SHA512), so no mosquitto_passwd is
needed on the operator's machine; the ACL names each member explicitly, so a removed
agent loses its topics with its password.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pfl_edge import fleet
from pfl_edge.files import write_atomic
from pfl_edge.transport.mqtt_common import COORDINATOR_USERNAME, check_id

CA_NAME = "pfl-edge fleet CA"
LOOPBACK = ("localhost", "127.0.0.1")
CA_DAYS = 3650
"""The CA outlives the certificates it signs (ten years, or --days if longer): when it
expires, every device of the fleet fails at once. A certificate never outlives the CA."""
PBKDF2_ITERATIONS = 101
"""mosquitto_passwd's default for its $7$ (PBKDF2-SHA512) hashes."""


def init_fleet(
    folder: Path, hosts: Sequence[str], *, days: int = 825, loopback: bool = True
) -> None:
    """A new fleet in `folder`: CA, coordinator and broker certificates for `hosts`
    (plus localhost and 127.0.0.1 with `loopback`), an empty registry, broker accounts."""
    if (folder / "ca.key").exists():
        raise ValueError(
            f"{folder} already holds a fleet CA (ca.key): add agents with `pfl-edge certs add`, "
            "or choose another --dir"
        )
    _check_days(days)
    names = list(dict.fromkeys([*hosts, *(LOOPBACK if loopback else ())]))
    if not names:
        raise ValueError("give the coordinator's host names or addresses (--host)")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    ca = (
        _builder(CA_NAME, ca_key.public_key(), CA_NAME, now, _after(now, max(days, CA_DAYS)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(folder / "ca.key", ca_key)
    write_atomic(folder / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    _issue(folder, "coordinator", COORDINATOR_USERNAME, names, usages, days)
    _issue(folder, "broker", "broker", names, [ExtendedKeyUsageOID.SERVER_AUTH], days)
    write_atomic(
        folder / "coordinator.mqtt-password", f"{secrets.token_urlsafe(24)}\n", secret=True
    )
    fleet.save(folder / "fleet.toml", fleet.Registry())
    _revoke(folder, [])
    _write_broker_files(folder)


def add_agent(folder: Path, agent_id: str, *, days: int = 825) -> Path:
    """Issue agent `agent_id` a key, certificate and broker password and register it;
    returns its folder. An id already there is re-issued: its old certificate is no
    longer admitted (the registry holds the new fingerprint)."""
    check_id("agent", agent_id)
    if agent_id == COORDINATOR_USERNAME:
        raise ValueError(f"{agent_id!r} is the coordinator's broker account: choose another id")
    _check_days(days)
    _require_fleet(folder)
    out = folder / "agents" / agent_id
    if (out / "agent.crt").is_file():
        _revoke(folder, [out / "agent.crt"])
    out.mkdir(parents=True, exist_ok=True)
    cert = _issue(out, "agent", agent_id, [], [ExtendedKeyUsageOID.CLIENT_AUTH], days, ca=folder)
    write_atomic(out / "ca.crt", (folder / "ca.crt").read_bytes())
    write_atomic(out / "mqtt-password", f"{secrets.token_urlsafe(24)}\n", secret=True)
    member = fleet.Member(agent_id, fleet.cert_sha256(cert), _now().strftime("%Y-%m-%dT%H:%M:%SZ"))
    registry = fleet.load(folder / "fleet.toml").with_member(member)
    fleet.save(folder / "fleet.toml", registry)
    _write_broker_files(folder)
    return out


def remove_agent(folder: Path, agent_id: str) -> None:
    """Remove agent `agent_id`: from the registry (the coordinator closes its link), its
    broker account and ACL lines (reload mosquitto), and its folder of files."""
    _require_fleet(folder)
    registry = fleet.load(folder / "fleet.toml")
    if agent_id not in registry.members:
        raise ValueError(f"agent {agent_id!r} is not in the fleet registry {folder / 'fleet.toml'}")
    fleet.save(folder / "fleet.toml", registry.without(agent_id))
    old = folder / "agents" / agent_id / "agent.crt"
    _revoke(folder, [old] if old.is_file() else [])
    shutil.rmtree(folder / "agents" / agent_id, ignore_errors=True)
    _write_broker_files(folder)


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """`password` as mosquitto 2 stores it: $7$ (PBKDF2-HMAC-SHA512), iterations, base64
    salt of 12 bytes, base64 hash of 64."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def _revoke(folder: Path, certificates: list[Path]) -> None:
    """ca.crl: the serials revoked before, plus those of `certificates`, signed by the CA."""
    ca_key, ca_cert = _ca(folder)
    now = _now()
    crl_path = folder / "ca.crl"
    revoked = list(x509.load_pem_x509_crl(crl_path.read_bytes())) if crl_path.is_file() else []
    for path in certificates:
        serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        revoked.append(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=3650))
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    write_atomic(crl_path, crl.public_bytes(serialization.Encoding.PEM))


def _ca(folder: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{folder / 'ca.key'} is not the fleet's EC key")
    return key, x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())


def _write_broker_files(folder: Path) -> None:
    """mosquitto/passwd and mosquitto/acl for the coordinator and the registry's members."""
    members = sorted(fleet.load(folder / "fleet.toml").members)
    accounts = {COORDINATOR_USERNAME: folder / "coordinator.mqtt-password"}
    accounts |= {a: folder / "agents" / a / "mqtt-password" for a in members}
    passwd = "".join(
        f"{user}:{mosquitto_hash(path.read_text().splitlines()[0])}\n"
        for user, path in accounts.items()
    )
    acl = [
        "# pfl-edge topic ACL written by `pfl-edge certs` from fleet.toml (deploy/mosquitto/acl)",
        f"user {COORDINATOR_USERNAME}",
        "topic readwrite pfl/#",
    ]
    for a in members:
        acl += [
            "",
            f"user {a}",
            f"topic write pfl/+/from/{a}/#",
            f"topic write pfl/+/peers/{a}/#",
            f"topic read pfl/+/to/{a}/#",
            "topic read pfl/+/broadcast/#",
            "topic read pfl/+/peers/#",
        ]
    (folder / "mosquitto").mkdir(exist_ok=True)
    write_atomic(folder / "mosquitto" / "passwd", passwd, secret=True)
    write_atomic(folder / "mosquitto" / "acl", "\n".join(acl) + "\n")


def _issue(
    folder: Path,
    stem: str,
    common_name: str,
    names: Sequence[str],
    usages: list[x509.ObjectIdentifier],
    days: int,
    ca: Path | None = None,
) -> bytes:
    """Key and certificate `<stem>.key/.crt` in `folder`, signed by the CA in `ca`
    (default: `folder`); returns the certificate's PEM."""
    ca_key, ca_cert = _ca(ca or folder)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        _builder(
            common_name,
            key.public_key(),
            CA_NAME,
            now,
            min(_after(now, days), ca_cert.not_valid_after_utc),
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
    pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    _write_key(folder / f"{stem}.key", key)
    write_atomic(folder / f"{stem}.crt", pem)
    return pem


def _builder(
    common_name: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: str,
    now: dt.datetime,
    until: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _after(now: dt.datetime, days: int) -> dt.datetime:
    return now + dt.timedelta(days=days)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_days(days: int) -> None:
    if days < 1:
        raise ValueError(f"certificates must be valid for at least 1 day, not {days} (--days)")


def _require_fleet(folder: Path) -> None:
    if not (folder / "ca.key").is_file() or not (folder / "fleet.toml").is_file():
        raise ValueError(f"{folder} holds no fleet (ca.key, fleet.toml): run `pfl-edge certs init`")


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, pem, secret=True)

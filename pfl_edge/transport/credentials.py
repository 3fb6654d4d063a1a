"""How a side proves who it is and checks its peer, for every transport: TLS files, and the
username and password a broker asks for. The gRPC transports take `tls` (a password is an
MQTT broker login: gRPC agents prove their identity with a client certificate); the MQTT
transports take all of it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pfl_edge.constants import CHUNK_BYTES, KEEPALIVE_SECONDS, MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS.

    A client: `ca_certs` signed the server's certificate (the client checks it and the host
    name); `certfile` and `keyfile` are this side's, where the server asks for one (mutual
    TLS). A server: `certfile` and `keyfile` are its own; `ca_certs`, where set, signed the
    clients' certificates, and a client without one is refused (mutual TLS)."""

    ca_certs: str | None
    certfile: str | None = None
    keyfile: str | None = None

    @property
    def mutual(self) -> bool:
        return self.ca_certs is not None and self.certfile is not None


@dataclass(frozen=True)
class Credentials:
    """All optional: no TLS and no login is plaintext, anonymous."""

    username: str | None = None
    password: str | None = None
    tls: TlsFiles | None = None

    def with_default_user(self, username: str) -> Credentials:
        """These credentials, with `username` where a password is given without one."""
        if self.password is not None and self.username is None:
            return replace(self, username=username)
        return self


@dataclass(frozen=True)
class TransportOptions:
    """A transport's settings besides its address and ids: the frame (chunk) and message
    sizes, the credentials, the keepalive."""

    chunk_bytes: int = CHUNK_BYTES
    max_message_bytes: int = MAX_MESSAGE_BYTES
    credentials: Credentials = Credentials()
    keepalive_s: float = KEEPALIVE_SECONDS
    """gRPC client: how often an idle link is pinged (a dead one is noticed within about
    twice this); the MQTT transports keep the broker's keepalive of KEEPALIVE_SECONDS."""


DEFAULT_OPTIONS = TransportOptions()
"""Default sizes, plaintext, no login."""


def load_credentials(
    username: str | None = None,
    password_file: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Credentials:
    """A client's credentials from the file names a user gives: the password is the first
    line of `password_file`; TLS needs the CA file, mutual TLS a certificate and its key as
    well. ValueError says which file is missing, unreadable or empty."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("a TLS client certificate and its key go together: give both")
    if tls_cert is not None and tls_ca is None:
        raise ValueError("a TLS client certificate needs the CA file that signed the server's")
    check_files(("TLS CA", tls_ca), ("TLS certificate", tls_cert), ("TLS key", tls_key))
    password = None
    if password_file is not None:
        try:
            lines = Path(password_file).read_text().splitlines()
        except OSError as exc:
            raise ValueError(
                f"cannot read the MQTT password file {password_file}: {exc.strerror}"
            ) from None
        if not lines or not lines[0]:
            raise ValueError(f"the MQTT password file {password_file} is empty")
        password = lines[0]
    tls = None if tls_ca is None else TlsFiles(tls_ca, tls_cert, tls_key)
    return Credentials(username, password, tls)


def check_files(*named: tuple[str, str | None]) -> None:
    """ValueError naming the first (what, path) whose path is given but not a file."""
    for what, path in named:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{what} file {path} not found")


def read_pem(path: str | None) -> bytes | None:
    """The bytes of a PEM file (None for None); ValueError when it cannot be read."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None

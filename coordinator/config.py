"""Run configuration (TOML), validated field by field with messages that say what to fix."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pfl_edge.constants import CHUNK_BYTES, MAX_MESSAGE_BYTES, PHASE_TIMEOUT_SECONDS
from pfl_edge.transport.base import DEFAULT_LIMITS

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


@dataclass(frozen=True)
class RunSection:
    id: str = "default"
    algorithm: str = "fedmd"
    rounds: int = 5
    min_agents: int = 2
    sample_fraction: float = 1.0
    quorum: float = 0.5
    """Fraction of a phase's agents whose replies let it close at the deadline."""
    phase_timeout_s: float = PHASE_TIMEOUT_SECONDS
    disconnect_grace_s: float = 10.0
    """A phase stops waiting for an agent disconnected this long (once a quorum answered)."""
    finish_timeout_s: float = 300.0
    seed: int = 0
    state_dir: str = "state"


@dataclass(frozen=True)
class PublicSection:
    dataset: str = "mnist"
    """"mnist" (its validation split), "animals", or a path to an .npz with key x."""
    samples: int = 5000
    per_round: int = 500
    num_classes: int = 10


MQTT_LOGIN_KEYS = (
    "mqtt_username",
    "mqtt_password_file",
    "mqtt_tls_ca",
    "mqtt_tls_cert",
    "mqtt_tls_key",
)
"""[server] keys of the coordinator's broker login (pfl_edge.transport.mqtt_common.login)."""


GRPC_TLS_KEYS = ("grpc_tls_cert", "grpc_tls_key", "grpc_tls_client_ca")
"""[server] keys of the gRPC listener's TLS."""

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerSection:
    grpc: str = "127.0.0.1:50051"
    grpc_tls_cert: str = ""
    grpc_tls_key: str = ""
    """The coordinator's certificate and key (PEM, `pfl-edge certs init`): gRPC over TLS."""
    grpc_tls_client_ca: str = ""
    """CA that signs the agents' certificates: mutual TLS, each agent's id is its
    certificate's common name; "" accepts agents without certificates."""
    fleet: str = ""
    """Fleet registry (fleet.toml of `pfl-edge certs`): only its members may join, each
    with the certificate registered for it; re-read when the file changes. "" admits
    any agent (any certificate of the CA, with mutual TLS)."""
    insecure: bool = False
    """Allow plaintext gRPC on an address other than loopback (a trusted network only)."""
    register_timeout_s: float = DEFAULT_LIMITS.register_timeout_s
    """A connection that has not registered within this is closed."""
    transfer_timeout_s: float = DEFAULT_LIMITS.transfer_timeout_s
    """A large message (chunked transfer) must arrive completely within this."""
    max_connections: int = DEFAULT_LIMITS.max_connections
    """Concurrent gRPC streams; more are refused (RESOURCE_EXHAUSTED)."""
    register_rate: float = 50.0
    """Registrations per second (bursts of 10 s worth); more are refused until there is room."""
    max_inflight_bytes: int = DEFAULT_LIMITS.max_inflight_bytes
    """Bytes of chunked messages under way from all agents together; a transfer beyond it
    is refused (RESOURCE_EXHAUSTED) and the agent retries. At least max_message_bytes."""
    mqtt: str = ""
    mqtt_username: str = ""
    """Broker login; "" with a password file means "coordinator"."""
    mqtt_password_file: str = ""
    mqtt_tls_ca: str = ""
    """CA file that signed the broker's certificate; "" means no TLS."""
    mqtt_tls_cert: str = ""
    mqtt_tls_key: str = ""
    """Client certificate and key, for a broker that requires them (mutual TLS)."""
    chunk_bytes: int = CHUNK_BYTES
    max_message_bytes: int = MAX_MESSAGE_BYTES
    http: str = "127.0.0.1:0"
    """HOST:PORT of the read-only inspection endpoint (/status, /inspect); port 0 picks a
    free one (the log says which); "" disables it."""


@dataclass(frozen=True)
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    public: PublicSection = field(default_factory=PublicSection)
    server: ServerSection = field(default_factory=ServerSection)
    algorithm: dict[str, Any] = field(default_factory=dict)
    """Algorithm parameters; checked against the strategy's when the run starts."""

    def __post_init__(self) -> None:
        r, p, s = self.run, self.public, self.server
        _check(
            bool(ID_PATTERN.match(r.id)),
            "run.id",
            r.id,
            "letters, digits, '_', '.', '-' (at most 64)",
        )
        _check(r.rounds >= 1, "run.rounds", r.rounds, "at least 1")
        _check(r.min_agents >= 1, "run.min_agents", r.min_agents, "at least 1")
        _check(0 < r.sample_fraction <= 1, "run.sample_fraction", r.sample_fraction, "in (0, 1]")
        _check(0 < r.quorum <= 1, "run.quorum", r.quorum, "in (0, 1]")
        for name in ("phase_timeout_s", "disconnect_grace_s", "finish_timeout_s"):
            _check(getattr(r, name) > 0, f"run.{name}", getattr(r, name), "positive")
        _check(p.samples >= 1, "public.samples", p.samples, "at least 1")
        _check(
            1 <= p.per_round <= p.samples,
            "public.per_round",
            p.per_round,
            f"between 1 and public.samples ({p.samples})",
        )
        _check(p.num_classes >= 2, "public.num_classes", p.num_classes, "at least 2")
        _check(
            not s.mqtt or s.mqtt.startswith("mqtt://"),
            "server.mqtt",
            s.mqtt,
            'an mqtt://HOST:PORT URL or ""',
        )
        for key in MQTT_LOGIN_KEYS:
            value = getattr(s, key)
            _check(not value or bool(s.mqtt), f"server.{key}", value, "used with server.mqtt")
        tls = {key: getattr(s, key) for key in GRPC_TLS_KEYS}
        for key, value in tls.items():
            _check(not value or bool(s.grpc), f"server.{key}", value, "used with server.grpc")
        _check(
            bool(s.grpc_tls_cert) == bool(s.grpc_tls_key),
            "server.grpc_tls_key",
            s.grpc_tls_key,
            "given together with server.grpc_tls_cert",
        )
        _check(
            not s.grpc_tls_client_ca or bool(s.grpc_tls_cert),
            "server.grpc_tls_client_ca",
            s.grpc_tls_client_ca,
            "used with server.grpc_tls_cert and grpc_tls_key (mutual TLS needs TLS)",
        )
        if s.grpc and not s.grpc_tls_cert and not s.insecure:
            hostport = split_hostport(s.grpc)
            _check(
                hostport is None or hostport[0] in LOOPBACK_HOSTS,
                "server.grpc",
                s.grpc,
                "a loopback address without TLS: set server.grpc_tls_cert and grpc_tls_key "
                "(pfl-edge certs init), or insecure = true on a trusted network",
            )
        for name in ("register_timeout_s", "transfer_timeout_s", "register_rate"):
            _check(getattr(s, name) > 0, f"server.{name}", getattr(s, name), "positive")
        _check(s.max_connections >= 1, "server.max_connections", s.max_connections, "at least 1")
        _check(
            s.max_inflight_bytes >= s.max_message_bytes,
            "server.max_inflight_bytes",
            s.max_inflight_bytes,
            "at least server.max_message_bytes",
        )
        _check(s.chunk_bytes >= 1024, "server.chunk_bytes", s.chunk_bytes, "at least 1024")
        _check(
            s.max_message_bytes >= s.chunk_bytes,
            "server.max_message_bytes",
            s.max_message_bytes,
            "at least server.chunk_bytes",
        )
        _check(
            not s.http or split_hostport(s.http) is not None,
            "server.http",
            s.http,
            'HOST:PORT (port 0 picks a free one) or "" to disable',
        )


def split_hostport(value: str) -> tuple[str, int] | None:
    """("127.0.0.1", 8080) for "127.0.0.1:8080" ("[::1]:8080" gives "::1"); None when
    `value` is not HOST:PORT with a port from 0 to 65535."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address needs brackets
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return None
    if any(c.isspace() or c in "[]/" for c in host):
        return None
    return host, int(port)


def _check(ok: bool, key: str, value: object, want: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is invalid: must be {want}")


def _section(cls: type[Any], table: object, name: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in [{name}]; known: {sorted(known)}")
    defaults = cls()
    out: dict[str, Any] = {}
    for key, value in table.items():
        default = getattr(defaults, key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ConfigError(
                f"{name}.{key} = {value!r} has type {type(value).__name__}, "
                f"expected {type(default).__name__}"
            )
        out[key] = value
    return cls(**out)


def from_dict(data: dict[str, Any]) -> RunConfig:
    unknown = sorted(set(data) - {"run", "public", "server", "algorithm"})
    if unknown:
        raise ConfigError(f"unknown table(s) {unknown}; known: run, public, server, algorithm")
    algorithm = data.get("algorithm", {})
    if not isinstance(algorithm, dict):
        raise ConfigError("[algorithm] must be a table")
    cfg = RunConfig(
        run=_section(RunSection, data.get("run", {}), "run"),
        public=_section(PublicSection, data.get("public", {}), "public"),
        server=_section(ServerSection, data.get("server", {}), "server"),
        algorithm=dict(algorithm),
    )
    # A service needs a listener; only a simulation (in-process fleet) goes without.
    _check(
        bool(cfg.server.grpc or cfg.server.mqtt),
        "server",
        "no listener",
        "set server.grpc or server.mqtt",
    )
    return cfg


def load(path: Path) -> RunConfig:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return from_dict(data)

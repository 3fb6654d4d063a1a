"""Pick a transport from a URL: grpc://host:port or mqtt://broker:port."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from pfl_edge.accounting import ByteMeter
from pfl_edge.constants import GRPC_DEFAULT_PORT, MQTT_DEFAULT_PORT
from pfl_edge.transport.base import DEFAULT_LIMITS, ClientTransport, ServerLimits, ServerTransport
from pfl_edge.transport.credentials import DEFAULT_OPTIONS, TlsFiles, TransportOptions

SCHEMES = ("grpc", "mqtt")


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.hostport}"


def parse(url: str) -> Endpoint:
    """grpc://host:port, mqtt://host:port, or bare host:port (gRPC)."""
    if "://" not in url:
        url = f"grpc://{url}"
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"unknown transport {parts.scheme!r} in {url!r}; use grpc:// or mqtt://")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}; write e.g. grpc://127.0.0.1:50051")
    default = GRPC_DEFAULT_PORT if parts.scheme == "grpc" else MQTT_DEFAULT_PORT
    return Endpoint(parts.scheme, parts.hostname, default if parts.port is None else parts.port)


def client_for(
    url: str,
    meter: ByteMeter,
    *,
    agent_id: str,
    run_id: str = "default",
    options: TransportOptions = DEFAULT_OPTIONS,
) -> ClientTransport:
    """The agent's transport with `options.credentials` (TLS; on MQTT the broker login)."""
    ep = parse(url)
    if ep.scheme == "grpc":
        from pfl_edge.transport.grpc_client import GrpcClientTransport

        return GrpcClientTransport(
            ep.hostport,
            meter,
            tls=_grpc_tls(ep, options),
            keepalive_s=options.keepalive_s,
            **_grpc_sizes(options),
        )
    from pfl_edge.transport.mqtt_client import MqttClientTransport

    return MqttClientTransport(
        ep.host, ep.port, meter, agent_id=agent_id, run_id=run_id, options=options
    )


def server_for(
    url: str,
    meter: ByteMeter,
    *,
    run_id: str = "default",
    options: TransportOptions = DEFAULT_OPTIONS,
    limits: ServerLimits = DEFAULT_LIMITS,
) -> ServerTransport:
    """The coordinator's transport: a gRPC bind address (`options.credentials.tls`: its
    TLS files, `limits`: what a connection is granted), or the MQTT broker to use."""
    ep = parse(url)
    if ep.scheme == "grpc":
        from pfl_edge.transport.grpc_server import GrpcServerTransport

        return GrpcServerTransport(
            ep.hostport, meter, tls=_grpc_tls(ep, options), limits=limits, **_grpc_sizes(options)
        )
    from pfl_edge.transport.mqtt_server import MqttServerTransport

    return MqttServerTransport(ep.host, ep.port, meter, run_id=run_id, options=options)


def _grpc_sizes(options: TransportOptions) -> dict[str, int]:
    return {"chunk_bytes": options.chunk_bytes, "max_message_bytes": options.max_message_bytes}


def _grpc_tls(ep: Endpoint, options: TransportOptions) -> TlsFiles | None:
    """The gRPC transports' TLS files; ValueError if `options` has a broker login."""
    c = options.credentials
    if c.username is not None or c.password is not None:
        raise ValueError(
            f"a username and password are an MQTT broker login; {ep} is gRPC, where an agent "
            "proves its identity with a TLS client certificate"
        )
    return c.tls

"""Pick a transport from a URL: grpc://host:port or mqtt://broker:port."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from pfl_edge.accounting import ByteMeter
from pfl_edge.constants import GRPC_DEFAULT_PORT, MQTT_DEFAULT_PORT
from pfl_edge.transport.base import ClientTransport, ServerTransport
from pfl_edge.transport.credentials import DEFAULT_OPTIONS, Credentials, TransportOptions

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
    """The agent's transport; `options.credentials` is for the MQTT broker."""
    ep = parse(url)
    if ep.scheme == "grpc":
        from pfl_edge.transport.grpc_client import GrpcClientTransport

        return GrpcClientTransport(ep.hostport, meter, **_grpc_sizes(ep, options))
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
) -> ServerTransport:
    """The coordinator's transport: a gRPC bind address, or the MQTT broker to use."""
    ep = parse(url)
    if ep.scheme == "grpc":
        from pfl_edge.transport.grpc_server import GrpcServerTransport

        return GrpcServerTransport(ep.hostport, meter, **_grpc_sizes(ep, options))
    from pfl_edge.transport.mqtt_server import MqttServerTransport

    return MqttServerTransport(ep.host, ep.port, meter, run_id=run_id, options=options)


def _grpc_sizes(ep: Endpoint, options: TransportOptions) -> dict[str, int]:
    """The gRPC transports' size arguments; ValueError if `options` has a broker login."""
    if options.credentials != Credentials():
        raise ValueError(f"username, password and tls are MQTT broker settings; {ep} is gRPC")
    return {"chunk_bytes": options.chunk_bytes, "max_message_bytes": options.max_message_bytes}

"""Pick a transport from a URL: grpc://host:port or mqtt://broker:port."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pfl_edge.accounting import ByteMeter
from pfl_edge.constants import CHUNK_BYTES, GRPC_DEFAULT_PORT, MAX_MESSAGE_BYTES, MQTT_DEFAULT_PORT
from pfl_edge.transport.base import ClientTransport, ServerTransport

if TYPE_CHECKING:
    from pfl_edge.transport.mqtt_common import TlsFiles

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
    chunk_bytes: int = CHUNK_BYTES,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    username: str | None = None,
    password: str | None = None,
    tls: TlsFiles | None = None,
) -> ClientTransport:
    """The agent's transport; `username`, `password` and `tls` are for the MQTT broker."""
    ep = parse(url)
    if ep.scheme == "grpc":
        _no_broker_login(ep, username, password, tls)
        from pfl_edge.transport.grpc_client import GrpcClientTransport

        return GrpcClientTransport(
            ep.hostport, meter, chunk_bytes=chunk_bytes, max_message_bytes=max_message_bytes
        )
    from pfl_edge.transport.mqtt_client import MqttClientTransport

    return MqttClientTransport(
        ep.host,
        ep.port,
        meter,
        agent_id=agent_id,
        run_id=run_id,
        chunk_bytes=chunk_bytes,
        max_message_bytes=max_message_bytes,
        username=username,
        password=password,
        tls=tls,
    )


def server_for(
    url: str,
    meter: ByteMeter,
    *,
    run_id: str = "default",
    chunk_bytes: int = CHUNK_BYTES,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    username: str | None = None,
    password: str | None = None,
    tls: TlsFiles | None = None,
) -> ServerTransport:
    """The coordinator's transport: a gRPC bind address, or the MQTT broker to use."""
    ep = parse(url)
    if ep.scheme == "grpc":
        _no_broker_login(ep, username, password, tls)
        from pfl_edge.transport.grpc_server import GrpcServerTransport

        return GrpcServerTransport(
            ep.hostport, meter, chunk_bytes=chunk_bytes, max_message_bytes=max_message_bytes
        )
    from pfl_edge.transport.mqtt_server import MqttServerTransport

    return MqttServerTransport(
        ep.host,
        ep.port,
        meter,
        run_id=run_id,
        chunk_bytes=chunk_bytes,
        max_message_bytes=max_message_bytes,
        username=username,
        password=password,
        tls=tls,
    )


def _no_broker_login(
    ep: Endpoint, username: str | None, password: str | None, tls: TlsFiles | None
) -> None:
    if username is not None or password is not None or tls is not None:
        raise ValueError(f"username, password and tls are MQTT broker settings; {ep} is gRPC")

"""What the gRPC server and client share: method path, channel options, status codes.

Frames cross gRPC as raw bytes (no generated serializers) so that a malformed frame is
answered with INVALID_ARGUMENT and a reason, and so that byte counts are exact.
"""

from __future__ import annotations

import grpc

from pfl_edge.constants import GRPC_MESSAGE_PREFIX_BYTES, KEEPALIVE_SECONDS
from pfl_edge.transport.credentials import TlsFiles, read_pem
from pfl_edge.v1 import messages_pb2 as pb
from pfl_edge.v1 import service_pb2

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
CONNECT_METHOD = f"/{SERVICE_NAME}/Connect"

FRAME_SLACK_BYTES = 64 << 10
"""Room above the chunk size for a frame's own header."""

_TO_GRPC: dict[int, grpc.StatusCode] = {
    pb.ERROR_CODE_INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    pb.ERROR_CODE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    pb.ERROR_CODE_PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    pb.ERROR_CODE_ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    pb.ERROR_CODE_FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    pb.ERROR_CODE_RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    pb.ERROR_CODE_DATA_LOSS: grpc.StatusCode.DATA_LOSS,
    pb.ERROR_CODE_UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    pb.ERROR_CODE_INTERNAL: grpc.StatusCode.INTERNAL,
    pb.ERROR_CODE_DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    pb.ERROR_CODE_ABORTED: grpc.StatusCode.ABORTED,
}
_FROM_GRPC = {v: k for k, v in _TO_GRPC.items()}


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with `tls.ca_certs`, mutual TLS: a client
    without a certificate signed by that CA fails the handshake."""
    cert, key = read_pem(tls.certfile), read_pem(tls.keyfile)
    if cert is None or key is None:
        raise ValueError("a TLS server needs its certificate and key")
    root = read_pem(tls.ca_certs)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=root, require_client_auth=root is not None
    )


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """A client's TLS: the CA that signed the server, and its own certificate where given."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls.ca_certs),
        private_key=read_pem(tls.keyfile),
        certificate_chain=read_pem(tls.certfile),
    )


def to_status(code: int) -> grpc.StatusCode:
    return _TO_GRPC.get(code, grpc.StatusCode.UNKNOWN)


def from_status(status: grpc.StatusCode | None) -> int:
    """The ErrorCode of a refusal; UNSPECIFIED for a lost connection (UNAVAILABLE etc.)."""
    if status is None:
        return pb.ERROR_CODE_UNSPECIFIED
    return _FROM_GRPC.get(status, pb.ERROR_CODE_UNSPECIFIED)


def wire_bytes(raw: bytes) -> int:
    """Bytes one frame takes inside the HTTP/2 DATA stream: the message and its prefix."""
    return len(raw) + GRPC_MESSAGE_PREFIX_BYTES


KEEPALIVE_TIMEOUT_SECONDS = 20.0
"""How long a keepalive ping may go unanswered before the link counts as dead."""


def channel_options(
    chunk_bytes: int, keepalive_s: float = KEEPALIVE_SECONDS
) -> list[tuple[str, int]]:
    """Client options: frames stay below the message limit; keepalive pings only, every
    `keepalive_s` on an idle link, which counts as dead (and the stream ends) when a ping
    is not answered within min(`keepalive_s`, 20 s): a silently dead link is noticed
    within about twice `keepalive_s`."""
    limit = chunk_bytes + FRAME_SLACK_BYTES
    timeout_ms = int(min(keepalive_s, KEEPALIVE_TIMEOUT_SECONDS) * 1000)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        # What actually ends a link whose ping is not answered in grpcio 1.7x+ (without
        # it a dead path went unnoticed for minutes, tests/test_grpc_tls.py).
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.enable_retries", 0),
    ]


def server_options(chunk_bytes: int, handshake_timeout_s: float) -> list[tuple[str, int]]:
    """Server options: accept the clients' keepalive pings, bound frame size, close a
    connection that has not finished its TCP/TLS/HTTP/2 handshake within
    `handshake_timeout_s` (silent sockets, half prefaces). Streams are bounded in all
    (`ServerLimits.max_connections`), not per connection: agents in one process (a
    simulation, a gateway) share one."""
    limit = chunk_bytes + FRAME_SLACK_BYTES
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.server_handshake_timeout_ms", int(handshake_timeout_s * 1000)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(KEEPALIVE_SECONDS * 500)),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]

"""Defaults shared by the coordinator and the agents, in one place."""

from __future__ import annotations

PROTOCOL_PACKAGE = "pfl_edge.v1"

CHUNK_BYTES = 1 << 20
"""Encoded envelopes above this size travel as chunks (1 MiB)."""

MAX_MESSAGE_BYTES = 256 << 20
"""Largest encoded envelope a receiver accepts (declared size checked before allocation)."""

MAX_CHUNK_FRAME_BYTES = CHUNK_BYTES + 4096
"""Largest single frame on a transport: one chunk plus its header."""

MAX_TENSOR_ELEMENTS = 1 << 28
"""Largest tensor (elements) a decoder accepts."""

GRPC_MESSAGE_PREFIX_BYTES = 5
"""gRPC length-prefixed message header: 1 flag byte + 4 length bytes."""

GRPC_DEFAULT_PORT = 50051
MQTT_DEFAULT_PORT = 1883

KEEPALIVE_SECONDS = 60.0
"""Transport keepalive on an idle connection (the only idle traffic)."""

RETRY_INITIAL_SECONDS = 0.5
RETRY_MAX_SECONDS = 20.0

PHASE_TIMEOUT_SECONDS = 600.0
"""Default per-phase deadline of a round."""

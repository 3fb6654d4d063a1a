"""Frames: what a transport carries. Large envelopes are split into chunks with an
integrity hash and reassembled on the other side; the declared size is checked
against the receiver's maximum before any buffer is allocated.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from pfl_edge import errors
from pfl_edge.constants import CHUNK_BYTES, MAX_MESSAGE_BYTES
from pfl_edge.v1 import messages_pb2 as pb

MAX_OPEN_TRANSFERS = 4
"""Chunked transfers one sender may have in progress at once."""


def kind_of(env: pb.Envelope) -> str:
    """The message kind used in logs and byte accounting (the body's field name)."""
    return env.WhichOneof("body") or "empty"


class Framer:
    """Turns envelopes into frames; envelopes above `chunk_bytes` become chunk frames."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes < 1024:
            raise ValueError(f"chunk_bytes must be at least 1024, got {chunk_bytes}")
        self.chunk_bytes = chunk_bytes
        self._ids = itertools.count(int.from_bytes(os.urandom(4), "little") << 16)

    def frames(self, env: pb.Envelope) -> Iterator[pb.Frame]:
        if env.ByteSize() <= self.chunk_bytes:
            yield pb.Frame(envelope=env)
            return
        data = env.SerializeToString()
        yield from self.chunk_frames(data)

    def chunk_frames(self, data: bytes) -> Iterator[pb.Frame]:
        """Chunks of an already encoded envelope."""
        digest = hashlib.sha256(data).digest()
        count = -(-len(data) // self.chunk_bytes)
        transfer_id = next(self._ids)
        for index in range(count):
            piece = data[index * self.chunk_bytes : (index + 1) * self.chunk_bytes]
            yield pb.Frame(
                chunk=pb.Chunk(
                    transfer_id=transfer_id,
                    index=index,
                    count=count,
                    total_bytes=len(data),
                    sha256=digest,
                    data=piece,
                )
            )


@dataclass
class _Transfer:
    count: int
    total_bytes: int
    sha256: bytes
    buffer: bytearray
    filled: int = 0
    next_index: int = 0
    wire_bytes: int = 0


@dataclass(frozen=True)
class Received:
    """A whole envelope and what it cost on the wire (all its frames)."""

    envelope: pb.Envelope
    wire_bytes: int
    frames: int


@dataclass
class Reassembler:
    """Collects the frames of one sender. Chunks of a transfer must arrive in order;
    a repeated chunk (at-least-once delivery) is ignored."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    _open: dict[int, _Transfer] = field(default_factory=dict)

    def feed(self, frame: pb.Frame, wire_bytes: int) -> Received | None:
        """Add one frame; returns the envelope once complete. Raises `Rejection`."""
        kind = frame.WhichOneof("kind")
        if kind == "envelope":
            return Received(frame.envelope, wire_bytes, 1)
        if kind != "chunk":
            raise errors.invalid("frame carries neither an envelope nor a chunk")
        return self._feed_chunk(frame.chunk, wire_bytes)

    def _feed_chunk(self, c: pb.Chunk, wire_bytes: int) -> Received | None:
        t = self._open.get(c.transfer_id)
        if t is None:
            t = self._start(c)
        if c.index < t.next_index:
            t.wire_bytes += wire_bytes
            return None
        if (c.index != t.next_index or c.count != t.count or c.total_bytes != t.total_bytes
                or c.sha256 != t.sha256):
            del self._open[c.transfer_id]
            raise errors.data_loss(
                f"transfer {c.transfer_id}: chunk {c.index}/{c.count} does not continue "
                f"chunk {t.next_index}/{t.count}; transfer dropped"
            )
        end = t.filled + len(c.data)
        if end > t.total_bytes:
            del self._open[c.transfer_id]
            raise errors.data_loss(
                f"transfer {c.transfer_id}: chunks exceed the declared {t.total_bytes} bytes"
            )
        t.buffer[t.filled : end] = c.data
        t.filled, t.next_index = end, t.next_index + 1
        t.wire_bytes += wire_bytes
        if t.next_index < t.count:
            return None
        del self._open[c.transfer_id]
        return self._finish(c.transfer_id, t)

    def _start(self, c: pb.Chunk) -> _Transfer:
        if c.total_bytes > self.max_message_bytes:
            raise errors.too_large(
                f"transfer {c.transfer_id} declares {c.total_bytes} bytes, above this "
                f"receiver's maximum of {self.max_message_bytes}"
            )
        if c.count == 0 or c.count > c.total_bytes or len(c.sha256) != 32:
            raise errors.invalid(
                f"transfer {c.transfer_id}: bad chunk header (count {c.count}, "
                f"total {c.total_bytes} bytes, sha256 of {len(c.sha256)} bytes)"
            )
        if c.index != 0:
            raise errors.data_loss(
                f"transfer {c.transfer_id} starts at chunk {c.index}, not 0; its start was lost"
            )
        if len(self._open) >= MAX_OPEN_TRANSFERS:
            raise errors.too_large(
                f"more than {MAX_OPEN_TRANSFERS} chunked transfers open at once from one sender"
            )
        t = _Transfer(c.count, c.total_bytes, bytes(c.sha256), bytearray(c.total_bytes))
        self._open[c.transfer_id] = t
        return t

    @staticmethod
    def _finish(transfer_id: int, t: _Transfer) -> Received:
        if t.filled != t.total_bytes:
            raise errors.data_loss(
                f"transfer {transfer_id}: got {t.filled} of {t.total_bytes} declared bytes"
            )
        if hashlib.sha256(t.buffer).digest() != t.sha256:
            raise errors.data_loss(f"transfer {transfer_id}: sha256 mismatch after reassembly")
        env = pb.Envelope()
        try:
            env.ParseFromString(t.buffer)
        except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning subclasses
            raise errors.invalid(f"transfer {transfer_id}: not a valid Envelope ({exc})") from exc
        return Received(env, t.wire_bytes, t.count)

    def reset(self) -> None:
        """Drop partial transfers (after a reconnect the sender starts over)."""
        self._open.clear()

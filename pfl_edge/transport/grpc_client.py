"""gRPC client transport: the agent's one long-lived stream to the coordinator."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from pfl_edge.accounting import ByteMeter
from pfl_edge.constants import CHUNK_BYTES, KEEPALIVE_SECONDS, MAX_MESSAGE_BYTES
from pfl_edge.errors import Rejection
from pfl_edge.framing import Framer, Message, Reassembler
from pfl_edge.transport import grpc_common as gc
from pfl_edge.transport.base import ClientTransport, Inbox, TransportClosed, record, record_sent
from pfl_edge.transport.credentials import TlsFiles

_END = object()

OUTBOX_FRAMES = 8
"""Frames waiting for the stream at most: `send` waits while they leave, so a large message
is never all in memory twice, and the few frame buffers in flight are reused (cheaper than
fresh memory for every frame)."""


class GrpcClientTransport(ClientTransport):
    name = "grpc"

    def __init__(
        self,
        target: str,
        meter: ByteMeter,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        tls: TlsFiles | None = None,
        keepalive_s: float = KEEPALIVE_SECONDS,
    ) -> None:
        """With `tls`, the channel is TLS (the CA checks the coordinator's certificate and
        host name; a certificate and key of this agent make it mutual TLS). `keepalive_s`:
        see grpc_common.channel_options."""
        self._target = target
        self._keepalive_s = keepalive_s
        self._credentials = None if tls is None else gc.channel_credentials(tls)
        self._meter = meter
        self._framer = Framer(chunk_bytes)
        self._chunk_bytes = chunk_bytes
        self._max_message_bytes = max_message_bytes
        self._channel: grpc.Channel | None = None
        self._outbox: queue.Queue[Any] = queue.Queue(OUTBOX_FRAMES)
        self._inbox = Inbox()
        self._ended: list[TransportClosed] = []
        """What ended the current stream, once its reader has stopped."""

    def connect(self, timeout_s: float) -> None:
        self.close()
        self._outbox, self._inbox, self._ended = queue.Queue(OUTBOX_FRAMES), Inbox(), []
        options = gc.channel_options(self._chunk_bytes, self._keepalive_s)
        channel = (
            grpc.insecure_channel(self._target, options=options)
            if self._credentials is None
            else grpc.secure_channel(self._target, self._credentials, options=options)
        )
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            channel.close()
            raise TransportClosed(
                f"coordinator at {self._target} not reachable within {timeout_s:.0f} s"
            ) from None
        self._channel = channel
        call = channel.stream_stream(
            gc.CONNECT_METHOD, request_serializer=None, response_deserializer=None
        )(self._requests(self._outbox))
        threading.Thread(
            target=self._read,
            args=(call, self._inbox, self._ended),
            daemon=True,
            name="grpc-reader",
        ).start()

    @staticmethod
    def _requests(outbox: queue.Queue[Any]) -> Iterator[bytes]:
        while (item := outbox.get()) is not _END:
            yield item

    def _read(self, call: Any, inbox: Inbox, ended: list[TransportClosed]) -> None:
        reassembler = Reassembler(self._max_message_bytes)
        try:
            for raw in call:
                received = reassembler.feed(raw, gc.wire_bytes(raw))
                if received is not None:
                    record(self._meter, "down", received)
                    inbox.put(received.message)
            end = TransportClosed("coordinator closed the stream")
        except grpc.RpcError as err:
            status = err.code() if hasattr(err, "code") else None
            details = err.details() if hasattr(err, "details") else str(err)
            name = status.name if status is not None else "UNKNOWN"
            end = TransportClosed(f"{name}: {details}", gc.from_status(status))
        except Rejection as r:
            end = TransportClosed(f"bad frame from coordinator: {r}")
            call.cancel()
        ended.append(end)
        inbox.put(end)

    def send(self, msg: Message) -> None:
        if self._inbox.closed is not None or self._channel is None:
            raise self._inbox.closed or TransportClosed("not connected")
        wire = frames = 0
        for raw in self._framer.frames(msg):  # each frame leaves while the next is built
            self._put(raw)
            wire += gc.wire_bytes(raw)
            frames += 1
        record_sent(self._meter, "up", msg.envelope, wire, frames)

    def send_raw(self, raw: bytes) -> None:
        """Put bytes on the stream as one frame, unchecked (for tests of bad input)."""
        self._put(raw)

    def _put(self, raw: bytes) -> None:
        """Queue one frame, waiting for room; raises TransportClosed once the stream ended
        (nothing takes frames from the queue then)."""
        outbox, ended = self._outbox, self._ended
        while True:
            try:
                outbox.put(raw, timeout=0.1)
                return
            except queue.Full:
                if ended:
                    raise ended[0] from None

    def recv(self, timeout_s: float | None) -> Message | None:
        return self._inbox.get(timeout_s)

    def close(self) -> None:
        outbox = self._outbox
        while True:  # end the request stream, dropping the frames it will not send now
            try:
                outbox.put_nowait(_END)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    outbox.get_nowait()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

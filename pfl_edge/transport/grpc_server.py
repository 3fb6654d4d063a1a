"""gRPC server transport: one long-lived bidirectional stream per agent, on which the
coordinator pushes its messages; plus the standard gRPC health service.

With TLS files it serves TLS only; with a client CA as well, mutual TLS: the handshake
refuses a client without a certificate of that CA, and the certificate's common name is
the `Identity` the coordinator checks a Register against. Before a stream has
registered it may send only small envelope frames, and it must register within
`ServerLimits.register_timeout_s`; a started transfer must finish within
`transfer_timeout_s`. A stream replaced by a newer one of the same agent, or ended by the
coordinator (`disconnect`), is closed with a status that says why."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from pfl_edge import errors
from pfl_edge.accounting import ByteMeter
from pfl_edge.constants import CHUNK_BYTES, MAX_MESSAGE_BYTES
from pfl_edge.errors import Rejection
from pfl_edge.fleet import cert_sha256
from pfl_edge.framing import (
    Framer,
    InFlight,
    Message,
    Reassembler,
    Received,
    parse_frame,
)
from pfl_edge.logs import Throttled
from pfl_edge.transport import grpc_common as gc
from pfl_edge.transport.base import (
    DEFAULT_LIMITS,
    PRE_REGISTER_FRAME_BYTES,
    Identity,
    Inbound,
    ServerLimits,
    ServerTransport,
    record,
    record_sent,
)
from pfl_edge.transport.credentials import TlsFiles
from pfl_edge.v1 import messages_pb2 as pb

log = logging.getLogger(__name__)
_refusals = Throttled(log)

ABORT_WAIT_S = 5.0
"""How long a refused stream's status may wait behind data its client does not read."""

OFFLOAD_FRAME_BYTES = 64 << 10
"""Frames at least this large are verified and copied off the event loop."""


class GrpcServerTransport(ServerTransport):
    name = "grpc"

    def __init__(
        self,
        bind: str,
        meter: ByteMeter,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        tls: TlsFiles | None = None,
        limits: ServerLimits = DEFAULT_LIMITS,
    ) -> None:
        self._bind = bind
        self._tls = tls
        self._limits = limits
        self._in_flight = InFlight(limits.max_inflight_bytes)
        self._meter = meter
        self._framer = Framer(chunk_bytes)
        self._chunk_bytes = chunk_bytes
        self._max_message_bytes = max_message_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._thread: threading.Thread | None = None
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._inbound: Inbound | None = None
        self._port = 0
        self._feeder: ThreadPoolExecutor | None = None

    @property
    def address(self) -> str:
        host = self._bind.rsplit(":", 1)[0]
        return f"grpc://{host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    def start(self, inbound: Inbound) -> None:
        self._inbound = inbound
        # Verifies and copies the chunks of all streams (the hash and memcpy mostly run
        # without the GIL); each stream has at most one frame there at a time.
        self._feeder = ThreadPoolExecutor(max_workers=4, thread_name_prefix="grpc-frames")
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve_start())
            except BaseException as exc:  # reported to start()'s caller
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="grpc-server", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            raise RuntimeError(f"gRPC server could not start on {self._bind}: {errors[0]}")
        log.info(
            "gRPC server listening on %s (%s)",
            self.address,
            "plaintext"
            if self._tls is None
            else "mutual TLS"
            if self._tls.ca_certs
            else "TLS, agents without certificates",
        )

    async def _serve_start(self) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

        server = grpc.aio.server(
            options=gc.server_options(self._chunk_bytes, self._limits.register_timeout_s),
            maximum_concurrent_rpcs=self._limits.max_connections,
        )
        handler = grpc.method_handlers_generic_handler(
            gc.SERVICE_NAME,
            {"Connect": grpc.stream_stream_rpc_method_handler(self._connect)},
        )
        server.add_generic_rpc_handlers((handler,))
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        if self._tls is None:
            self._port = server.add_insecure_port(self._bind)
        else:
            self._port = server.add_secure_port(self._bind, gc.server_credentials(self._tls))
        if self._port == 0:
            raise RuntimeError(f"cannot bind {self._bind}")
        await server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await health.set("", serving)
        await health.set(gc.SERVICE_NAME, serving)
        self._server = server

    def send(self, agent_id: str, msg: Message) -> bool:
        with self._lock:
            stream = self._streams.get(agent_id)
        loop = self._loop
        if stream is None or loop is None:
            return False
        loop.call_soon_threadsafe(stream.queue.put_nowait, self._encode(msg))
        return True

    def _encode(self, msg: Message) -> list[bytes]:
        raws = list(self._framer.frames(msg))
        record_sent(self._meter, "down", msg.envelope, sum(map(gc.wire_bytes, raws)), len(raws))
        return raws

    def disconnect(self, agent_id: str, code: int, reason: str) -> None:
        with self._lock:
            stream = self._streams.get(agent_id)
        loop = self._loop
        if stream is not None and loop is not None:
            loop.call_soon_threadsafe(stream.close, Rejection(code, reason))

    def stop(self, grace_s: float = 1.0) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return
        asyncio.run_coroutine_threadsafe(server.stop(grace_s), loop).result(grace_s + 5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        if self._feeder is not None:
            self._feeder.shutdown(wait=False, cancel_futures=True)

    async def _connect(self, _requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        stream = _Stream(asyncio.Queue(), asyncio.get_running_loop().create_future())
        writer = asyncio.create_task(self._write(stream.queue, context))
        link = _Link(context.peer(), time.monotonic(), self._identity(context))
        reason = "stream ended"
        refused: Rejection | None = None
        try:
            await self._read(stream, context, link)
        except asyncio.CancelledError:
            reason = "stream cancelled"
            raise
        except Rejection as r:
            reason, refused = f"refused: {r}", r
            _refusals.warning("refused message from %s: %s", link.agent_id or link.address, r)
        finally:
            writer.cancel()
            with self._lock:
                link.closed = True  # a Register accepted from now on binds nothing
                agent_id = link.agent_id
                mine = agent_id is not None and self._streams.get(agent_id) is stream
                if mine and agent_id is not None:
                    del self._streams[agent_id]
            if mine and agent_id is not None:
                assert self._inbound is not None
                self._inbound.on_disconnect(agent_id, reason)
        if refused is not None:
            # After letting go of the stream: the status trails what the client has not
            # read yet, and a client that stopped reading would hold it (and us) forever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    context.abort(gc.to_status(refused.code), refused.reason), ABORT_WAIT_S
                )

    def _identity(self, context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
        """The client certificate's agent id and fingerprint (mutual TLS), else None."""
        if self._tls is None or self._tls.ca_certs is None:
            return None
        auth = context.auth_context()
        names = list(auth.get("x509_common_name", ()))
        pems = list(auth.get("x509_pem_cert", ()))
        if not names or not pems:  # fail closed: a certificate without a name is no one
            return Identity("", "")
        return Identity(names[0].decode(errors="replace"), cert_sha256(pems[0]))

    async def _read(
        self, stream: _Stream, context: grpc.aio.ServicerContext[Any, Any], link: _Link
    ) -> None:
        """Read frames until the agent closes; `link.agent_id` is set once registered.

        A large frame (a chunk) is fed to the reassembler in a worker thread, which verifies
        its hash and copies it while this loop reads the next frame; frames are still fed
        one at a time and in order, and each is fed before the next is."""
        reassembler = Reassembler(self._max_message_bytes, budget=self._in_flight)
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[Received | None] | None = None
        reading: asyncio.Future[Any] | None = None
        try:
            while True:
                reading = asyncio.ensure_future(context.read())
                if pending is not None:
                    fed, pending = pending, None
                    await self._deliver(await fed, stream, link)
                    del fed  # its message: the blobs' buffers are reused once all let go
                raw = await self._next(reading, stream.closing, link, reassembler)
                reading = None
                if raw is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                if link.agent_id is None:
                    _check_before_registration(raw)
                wire = gc.wire_bytes(raw)
                if len(raw) >= OFFLOAD_FRAME_BYTES:
                    pending = loop.run_in_executor(self._feeder, reassembler.feed, raw, wire)
                else:
                    await self._deliver(reassembler.feed(raw, wire), stream, link)
        finally:  # when the stream ends early, nobody wants what is in flight
            for fut in (reading, pending):
                if fut is not None:
                    fut.cancel()
            # Waits for a feed still running in a worker thread, then gives every open
            # transfer's bytes back to the shared budget.
            reassembler.close()

    async def _next(
        self,
        reading: asyncio.Future[Any],
        closing: asyncio.Future[Rejection],
        link: _Link,
        reassembler: Reassembler,
    ) -> Any:
        """The next frame; Rejection when the stream is closed or a deadline passes first."""
        limits = self._limits
        while True:
            now = time.monotonic()
            if link.agent_id is None:
                timeout: float | None = link.opened + limits.register_timeout_s - now
            else:
                oldest = reassembler.oldest_open()
                timeout = None if oldest is None else oldest + limits.transfer_timeout_s - now
            await asyncio.wait(
                (reading, closing),
                timeout=None if timeout is None else max(timeout, 0.0) + 0.01,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if closing.done():
                raise closing.result()
            if reading.done():
                return reading.result()
            if link.agent_id is None:
                raise Rejection(
                    pb.ERROR_CODE_DEADLINE_EXCEEDED,
                    f"did not register within {limits.register_timeout_s:g} s of connecting",
                )
            late = reassembler.expire(limits.transfer_timeout_s)
            if late:
                raise Rejection(
                    pb.ERROR_CODE_DEADLINE_EXCEEDED,
                    f"transfer {late[0]} not completed within {limits.transfer_timeout_s:g} s; "
                    "dropped",
                )

    async def _deliver(self, received: Received | None, stream: _Stream, link: _Link) -> None:
        """Hand a complete message (if `received` is one) to the coordinator, and wait for
        its decision."""
        if received is None:
            return
        assert self._inbound is not None
        record(self._meter, "up", received)
        env = received.envelope
        peer = link.agent_id
        if peer is not None and env.HasField("register"):
            raise Rejection(
                pb.ERROR_CODE_FAILED_PRECONDITION,
                "this connection has registered already: a new registration needs a new one",
            )
        fut = self._inbound.on_message(peer, received.message, link.identity)
        registering = env.agent_id if peer is None and env.HasField("register") else None
        # Runs in the coordinator's thread as it decides, so the replies are queued
        # before anything it sends this agent afterwards.
        fut.add_done_callback(
            functools.partial(self._accepted, stream=stream, link=link, registering=registering)
        )
        await asyncio.wrap_future(fut)

    def _accepted(
        self,
        fut: Future[list[Message]],
        stream: _Stream,
        link: _Link,
        registering: str | None,
    ) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        loop = self._loop
        assert loop is not None
        if registering is not None:
            with self._lock:
                gone = link.closed
                previous = None if gone else self._streams.get(registering)
                if not gone:
                    self._streams[registering] = stream
                    link.agent_id = registering
                bound_elsewhere = registering in self._streams
            if gone:  # the stream ended while its Register was decided: nothing to bind
                if not bound_elsewhere:  # else an older stream of the agent still serves it
                    assert self._inbound is not None
                    self._inbound.on_disconnect(registering, "stream ended while registering")
                return
            if previous is not None and previous is not stream:
                close = Rejection(
                    pb.ERROR_CODE_ABORTED,
                    f"replaced by a newer connection of agent {registering} (from "
                    f"{link.address}): another process uses this agent id",
                )
                loop.call_soon_threadsafe(previous.close, close)
        for msg in fut.result():
            loop.call_soon_threadsafe(stream.queue.put_nowait, self._encode(msg))

    @staticmethod
    async def _write(
        queue: asyncio.Queue[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        while True:
            for raw in await queue.get():
                await context.write(raw)


@dataclass(frozen=True)
class _Stream:
    """What the server holds of one stream: what it sends, and the status that ends it
    (set from any thread via the loop; the reader ends the stream with it at once, even
    while the writer waits for a client that stopped reading)."""

    queue: asyncio.Queue[Any]
    closing: asyncio.Future[Rejection]

    def close(self, close: Rejection) -> None:
        if not self.closing.done():
            self.closing.set_result(close)


@dataclass
class _Link:
    """One stream: where from, since when, what its handshake proved, (once the
    coordinator accepted its Register) the agent id it is bound to, and whether it ended."""

    address: str
    opened: float
    identity: Identity | None
    agent_id: str | None = None
    closed: bool = False


def _check_before_registration(raw: bytes) -> None:
    """Refuse what a stream may not send before it has registered: anything but a small
    envelope frame (no transfer is started, no buffer taken, for a stranger)."""
    if len(raw) > PRE_REGISTER_FRAME_BYTES:
        raise errors.too_large(
            f"a {len(raw)}-byte frame before registration; at most {PRE_REGISTER_FRAME_BYTES} "
            "until a Register is accepted"
        )
    if parse_frame(raw).WhichOneof("kind") != "envelope":
        raise Rejection(
            pb.ERROR_CODE_UNAUTHENTICATED,
            "register first: chunked transfers need a registered connection",
        )

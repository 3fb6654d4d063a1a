"""gRPC server transport: one long-lived bidirectional stream per agent, on which the
coordinator pushes its messages; plus the standard gRPC health service."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc

from pfl_edge.accounting import ByteMeter
from pfl_edge.constants import CHUNK_BYTES, MAX_MESSAGE_BYTES
from pfl_edge.errors import Rejection
from pfl_edge.framing import Framer, Message, Reassembler, Received
from pfl_edge.transport import grpc_common as gc
from pfl_edge.transport.base import Inbound, ServerTransport, record, record_sent

log = logging.getLogger(__name__)

OFFLOAD_FRAME_BYTES = 64 << 10
"""Frames at least this large are verified and copied off the event loop."""

_CLOSE = object()
"""Queue sentinel: end this agent's stream (a newer stream of the same agent replaced it)."""


class GrpcServerTransport(ServerTransport):
    name = "grpc"

    def __init__(
        self,
        bind: str,
        meter: ByteMeter,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._bind = bind
        self._meter = meter
        self._framer = Framer(chunk_bytes)
        self._chunk_bytes = chunk_bytes
        self._max_message_bytes = max_message_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._thread: threading.Thread | None = None
        self._streams: dict[str, asyncio.Queue[Any]] = {}
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
        log.info("gRPC server listening on %s", self.address)

    async def _serve_start(self) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

        server = grpc.aio.server(options=gc.server_options(self._chunk_bytes))
        handler = grpc.method_handlers_generic_handler(
            gc.SERVICE_NAME,
            {"Connect": grpc.stream_stream_rpc_method_handler(self._connect)},
        )
        server.add_generic_rpc_handlers((handler,))
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        self._port = server.add_insecure_port(self._bind)
        if self._port == 0:
            raise RuntimeError(f"cannot bind {self._bind}")
        await server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await health.set("", serving)
        await health.set(gc.SERVICE_NAME, serving)
        self._server = server

    def send(self, agent_id: str, msg: Message) -> bool:
        with self._lock:
            queue = self._streams.get(agent_id)
        loop = self._loop
        if queue is None or loop is None:
            return False
        loop.call_soon_threadsafe(queue.put_nowait, self._encode(msg))
        return True

    def _encode(self, msg: Message) -> list[bytes]:
        raws = list(self._framer.frames(msg))
        record_sent(self._meter, "down", msg.envelope, sum(map(gc.wire_bytes, raws)), len(raws))
        return raws

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
        queue: asyncio.Queue[Any] = asyncio.Queue()
        handler = asyncio.current_task()
        assert handler is not None
        writer = asyncio.create_task(self._write(queue, context, handler))
        bound: list[str] = []
        reason = "stream ended"
        try:
            await self._read(queue, context, bound)
        except asyncio.CancelledError:
            reason = "stream cancelled"
            raise
        except Rejection as r:
            reason = f"refused: {r}"
            log.warning("refused message from %s: %s", bound or context.peer(), r)
            await context.abort(gc.to_status(r.code), r.reason)
        finally:
            writer.cancel()
            with self._lock:
                mine = bool(bound) and self._streams.get(bound[0]) is queue
                if mine:
                    del self._streams[bound[0]]
            if mine:
                assert self._inbound is not None
                self._inbound.on_disconnect(bound[0], reason)

    async def _read(
        self,
        queue: asyncio.Queue[Any],
        context: grpc.aio.ServicerContext[Any, Any],
        bound: list[str],
    ) -> None:
        """Read frames until the agent closes; `bound` gets the agent id once registered.

        A large frame (a chunk) is fed to the reassembler in a worker thread, which verifies
        its hash and copies it while this loop reads the next frame; frames are still fed
        one at a time and in order, and each is fed before the next is."""
        reassembler = Reassembler(self._max_message_bytes)
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[Received | None] | None = None
        reading: asyncio.Future[Any] | None = None
        try:
            while True:
                reading = asyncio.ensure_future(context.read())
                if pending is not None:
                    fed, pending = pending, None
                    await self._deliver(await fed, queue, bound)
                    del fed  # its message: the blobs' buffers are reused once all let go
                raw, reading = await reading, None
                if raw is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                wire = gc.wire_bytes(raw)
                if len(raw) >= OFFLOAD_FRAME_BYTES:
                    pending = loop.run_in_executor(self._feeder, reassembler.feed, raw, wire)
                else:
                    await self._deliver(reassembler.feed(raw, wire), queue, bound)
        finally:  # when the stream ends early, nobody wants what is in flight
            for fut in (reading, pending):
                if fut is not None:
                    fut.cancel()

    async def _deliver(
        self, received: Received | None, queue: asyncio.Queue[Any], bound: list[str]
    ) -> None:
        """Hand a complete message (if `received` is one) to the coordinator, and wait for
        its decision."""
        if received is None:
            return
        assert self._inbound is not None
        record(self._meter, "up", received)
        env = received.envelope
        peer = bound[0] if bound else None
        fut = self._inbound.on_message(peer, received.message)
        registering = env.agent_id if peer is None and env.HasField("register") else None
        # Runs in the coordinator's thread as it decides, so the replies are queued
        # before anything it sends this agent afterwards.
        fut.add_done_callback(
            functools.partial(self._accepted, queue=queue, bound=bound, registering=registering)
        )
        await asyncio.wrap_future(fut)

    def _accepted(
        self,
        fut: Future[list[Message]],
        queue: asyncio.Queue[Any],
        bound: list[str],
        registering: str | None,
    ) -> None:
        if fut.exception() is not None:
            return
        loop = self._loop
        assert loop is not None
        if registering is not None:
            with self._lock:
                previous = self._streams.get(registering)
                self._streams[registering] = queue
            if previous is not None and previous is not queue:
                loop.call_soon_threadsafe(previous.put_nowait, _CLOSE)
            bound.append(registering)
        for msg in fut.result():
            loop.call_soon_threadsafe(queue.put_nowait, self._encode(msg))

    @staticmethod
    async def _write(
        queue: asyncio.Queue[Any],
        context: grpc.aio.ServicerContext[Any, Any],
        handler: asyncio.Task[Any],
    ) -> None:
        while True:
            item = await queue.get()
            if item is _CLOSE:
                handler.cancel()
                return
            for raw in item:
                await context.write(raw)

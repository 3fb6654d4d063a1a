"""A hostile client built from `proto/` alone: the .proto sources are compiled at test time
into a fresh descriptor pool, and frames go over a bare gRPC stream with identity
serializers. Nothing of pfl_edge (its generated modules, framing, codec, transports) is
used, so the attacker can send what the project's own client never would, and a change
in the project's code cannot quietly change what the attacker sends."""

from __future__ import annotations

import functools
import queue
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import xxhash
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto"
PACKAGE = "pfl_edge.v1"
CONNECT = f"/{PACKAGE}.Coordinator/Connect"

SAMPLE_SHAPE = (1, 8, 8)
NUM_CLASSES = 10

Frame = Any
"""A message of the compiled pool (its classes are made at run time: no static type)."""


class Messages:
    """The message classes of proto/pfl_edge/v1, by name (`messages().Frame`, ...)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        descriptor = self._pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
        cls = message_factory.GetMessageClass(descriptor)
        setattr(self, name, cls)
        return cls

    def enum(self, name: str, value: str) -> int:
        """The number of `value` in enum `name` (e.g. enum("DType", "DTYPE_FLOAT32"))."""
        number: int = (
            self._pool.FindEnumTypeByName(f"{PACKAGE}.{name}").values_by_name[value].number
        )
        return number


@functools.cache
def messages() -> Messages:
    """Compile proto/pfl_edge/v1/*.proto once per test session."""
    sources = sorted((PROTO_DIR / PACKAGE.replace(".", "/")).glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pfl_edge.pb"
        args = [
            "protoc",
            f"--descriptor_set_out={out}",
            "--include_imports",
            "-I",
            str(PROTO_DIR),
            *(str(p.relative_to(PROTO_DIR)) for p in sources),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    return Messages(pool)


@dataclass(frozen=True)
class ClientTls:
    """PEM bytes: the CA the client trusts for the server, and its own certificate
    (None: a TLS client without a certificate)."""

    root: bytes
    key: bytes | None = None
    chain: bytes | None = None


def agent_tls(folder: Path) -> ClientTls:
    """An agent folder of `pfl-edge certs add` (agent.crt, agent.key, ca.crt), read now:
    the files may be removed later (a revoked agent)."""
    return ClientTls(
        (folder / "ca.crt").read_bytes(),
        (folder / "agent.key").read_bytes(),
        (folder / "agent.crt").read_bytes(),
    )


def _identity(b: bytes) -> bytes:
    return b


class RawClient:
    """One bidirectional Connect stream on its own channel (its own TCP connection: a
    local subchannel pool, so that streams never share a connection)."""

    def __init__(self, target: str, tls: ClientTls | None) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(tls.root, tls.key, tls.chain)
            self._channel = grpc.secure_channel(target, creds, options=options)
        self._outbox: queue.Queue[bytes | Iterable[Any] | None] = queue.Queue()
        self._inbox: queue.Queue[bytes | None] = queue.Queue()
        self._done = threading.Event()
        self._status: tuple[grpc.StatusCode, str] | None = None
        self.seq = 0
        """The last envelope number this client used (`next_seq`)."""
        connect = self._channel.stream_stream(
            CONNECT, request_serializer=_identity, response_deserializer=_identity
        )
        self._call: Any = connect(self._requests())
        self._reader = threading.Thread(target=self._read, daemon=True, name="rawproto-reader")
        self._reader.start()

    def _requests(self) -> Iterator[bytes]:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            if isinstance(item, bytes):
                yield item
            else:  # made one at a time, as gRPC takes them: a large series costs no memory
                for frame in item:
                    yield _raw(frame)

    def _read(self) -> None:
        try:
            for raw in self._call:
                self._inbox.put(raw)
            self._status = (self._call.code(), self._call.details() or "")
        except grpc.RpcError as exc:
            self._status = (exc.code(), exc.details() or "")
        finally:
            self._inbox.put(None)
            self._done.set()

    def next_seq(self) -> int:
        """A number for the next envelope: the coordinator drops one it has seen."""
        self.seq += 1
        return self.seq

    def send(self, frame: Frame | bytes) -> None:
        self._outbox.put(_raw(frame))

    def send_all(self, frames: Iterable[Frame | bytes]) -> None:
        """Send frames made lazily, one when gRPC takes the previous."""
        self._outbox.put(frames)

    def recv(self, timeout: float = 10.0) -> Frame | None:
        """The next frame, parsed; None when none came within `timeout` or the stream ended."""
        try:
            raw = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if raw is None:
            self._inbox.put(None)  # the end stays visible to later calls
            return None
        return messages().Frame.FromString(raw)

    def expect(self, body: str, timeout: float = 10.0) -> Any:
        """The next frame's envelope, which must carry `body` (e.g. "run_config")."""
        frame = self.recv(timeout)
        if frame is None:
            raise AssertionError(f"no {body} within {timeout} s (stream status {self._status})")
        got = frame.WhichOneof("kind")
        kind = frame.envelope.WhichOneof("body") if got == "envelope" else got
        if kind != body:
            raise AssertionError(f"expected {body}, got {kind}: {frame}")
        return frame.envelope

    @property
    def ended(self) -> bool:
        return self._done.is_set()

    def status(self, timeout: float = 10.0) -> tuple[grpc.StatusCode, str]:
        """The status that ended the stream; AssertionError when it is still open."""
        if not self._done.wait(timeout):
            raise AssertionError(f"the stream is still open after {timeout} s")
        assert self._status is not None
        return self._status

    def close(self) -> None:
        self._outbox.put(None)
        self._call.cancel()
        self._channel.close()
        self._reader.join(5)


def _raw(frame: Frame | bytes) -> bytes:
    if isinstance(frame, bytes):
        return frame
    data: bytes = frame.SerializeToString()
    return data


# Frames.


def envelope(
    agent_id: str, *, seq: int = 0, round: int = 0, message_id: int = 0, **body: Any
) -> Frame:
    """An envelope frame with one body, e.g. envelope("a", seq=1, metrics=m.Metrics())."""
    m = messages()
    return m.Frame(
        envelope=m.Envelope(agent_id=agent_id, round=round, seq=seq, **body),
        message_id=message_id,
    )


def profile(agent_id: str, **fields: Any) -> Any:
    """A plausible Register for this run (the harness's ScriptedAgent profile, with a
    device); `fields` override top-level Register fields (device=, model=, ...)."""
    m = messages()
    reg = {
        "device": m.DeviceProfile(
            cpu_arch="aarch64",
            cpu_cores=4,
            memory_bytes=4 << 30,
            accelerator="",
            hostname=f"{agent_id}-board",
        ),
        "model": m.ModelInfo(
            architecture="scripted",
            parameter_count=1000,
            input_shape=list(SAMPLE_SHAPE),
            num_classes=NUM_CLASSES,
        ),
        "num_train_samples": 100,
        "num_test_samples": 20,
        **fields,
    }
    return m.Register(**reg)


def register(agent_id: str, *, seq: int = 1, **fields: Any) -> Frame:
    return envelope(agent_id, seq=seq, register=profile(agent_id, **fields))


def head(
    transfer_id: int,
    blob_bytes: Iterable[int],
    chunk_bytes: int,
    env: Any | None = None,
) -> Frame:
    m = messages()
    return m.Frame(
        head=m.Head(
            transfer_id=transfer_id,
            envelope=env if env is not None else m.Envelope(),
            blob_bytes=list(blob_bytes),
            chunk_bytes=chunk_bytes,
        )
    )


def chunk(transfer_id: int, blob: int, index: int, data: bytes) -> Frame:
    """A chunk with the right xxh3_64 of its data."""
    m = messages()
    return m.Frame(
        chunk=m.Chunk(
            transfer_id=transfer_id,
            blob=blob,
            index=index,
            data=data,
            xxh3_64=xxhash.xxh3_64_intdigest(data),
        )
    )

"""Frames: what a transport carries.

A `Message` is an envelope plus its blobs: the data of large tensors, kept out of the
protobuf so that no 100 MB copy is ever made of it. A message without blobs travels as
one Envelope frame. A message with blobs travels as a Head frame (the envelope and the
blob sizes) followed by Chunk frames: each a slice of one blob, in order, with its own
64-bit XXH3 hash. The receiver checks the declared sizes against its maximum before allocating,
fills one buffer per blob, and verifies every chunk.

Every message carries an id (an envelope frame's `message_id`, a head's `transfer_id`),
unique per sender: a receiver drops a message it completed recently, and the chunks of
one, so that an at-least-once transport (MQTT QoS 1 across a broker restart) delivers
each message once.

XXH3-64, not sha256 or CRC-32: a non-cryptographic hash that misses random corruption once
in 2**64 chunks (sizes and order are checked apart) and costs about 7 ms per 100 MB on each
side, against 40 for zlib's CRC-32 and 70 for sha256; that CPU decides a transfer's speed
on 2 cores. None of them would authenticate anything: the check travels beside the data it
covers (TLS does that).
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import xxhash

from pfl_edge import errors
from pfl_edge.constants import CHUNK_BYTES, MAX_MESSAGE_BYTES
from pfl_edge.v1 import messages_pb2 as pb
from pfl_edge.v1 import tensor_pb2 as tpb

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview | np.ndarray
"""A blob: any C-contiguous buffer."""

MAX_BLOBS = 4096
MAX_OPEN_TRANSFERS = 4
"""Transfers one sender may have in progress at once."""
MIN_CHUNK_BYTES = 1024
RECYCLE_BYTES = MAX_MESSAGE_BYTES
"""Unused receive buffers a process keeps for reuse, at most (bytes)."""
FRAMES_AHEAD = 4
"""Chunk frames a Framer builds ahead of the one its reader takes."""
REMEMBERED_IDS = 1024
"""Completed message ids a Reassembler remembers to drop repeats of."""

_LEN = 2  # protobuf wire type of length-delimited fields
_FIXED64 = 1  # protobuf wire type of fixed64 fields (Chunk.xxh3_64)


@dataclass
class Message:
    envelope: pb.Envelope
    blobs: list[Buffer] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return kind_of(self.envelope)


def kind_of(env: pb.Envelope) -> str:
    """The message kind used in logs and byte accounting (the body's field name)."""
    return env.WhichOneof("body") or "empty"


def tensors_of(env: pb.Envelope) -> list[tpb.Tensor]:
    """Every tensor an envelope carries (the places the wire protocol puts them)."""
    kind = kind_of(env)
    if kind == "task":
        return list(env.task.tensors)
    if kind == "result":
        return list(env.result.tensors)
    if kind == "public_data":
        return [env.public_data.images]
    return []


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, length: int) -> bytes:
    """Key and length prefix of a length-delimited protobuf field."""
    return _varint(number << 3 | _LEN) + _varint(length)


class Framer:
    """Turns messages into serialized frames."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes < MIN_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be at least {MIN_CHUNK_BYTES}, got {chunk_bytes}")
        self.chunk_bytes = chunk_bytes
        # Random per sender, and always in [2**48, 2**49): a 7-byte varint, so that a
        # message's size on the wire does not vary from run to run.
        start = 1 << 48 | int.from_bytes(os.urandom(4), "little") << 16
        self._ids = itertools.count(start)

    def frames(self, msg: Message) -> Iterator[bytes]:
        env, blobs = msg.envelope, list(msg.blobs)
        if env.ByteSize() > self.chunk_bytes:
            env, blobs = externalize(env, blobs)
        transfer_id = next(self._ids)
        if not blobs:
            yield pb.Frame(envelope=env, message_id=transfer_id).SerializeToString()
            return
        views = blob_views(blobs)
        head = pb.Head(
            transfer_id=transfer_id,
            envelope=env,
            blob_bytes=[v.nbytes for v in views],
            chunk_bytes=self.chunk_bytes,
        )
        yield pb.Frame(head=head).SerializeToString()
        pieces = [
            (number, index, view[start : start + self.chunk_bytes])
            for number, view in enumerate(views, start=1)
            for index, start in enumerate(range(0, view.nbytes, self.chunk_bytes))
        ]
        # Worker threads checksum and build the next few frames (xxhash and bytes.join
        # release the GIL) while the ones before leave; only a few frames exist at a time.
        pool, ahead = _frame_pool(), collections.deque[Future[bytes]]()
        for number, index, data in pieces:
            ahead.append(pool.submit(_chunk, transfer_id, number, index, data))
            if len(ahead) >= FRAMES_AHEAD:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def _digest(data: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


def _chunk(transfer_id: int, blob: int, index: int, data: memoryview) -> bytes:
    # Hand-built Frame{chunk{..., data}} so that the data is copied once, into the frame.
    header = pb.Chunk(
        transfer_id=transfer_id, blob=blob, index=index, xxh3_64=_digest(data)
    ).SerializeToString()
    data_key = _field(5, data.nbytes)
    inner = len(header) + len(data_key) + data.nbytes
    return b"".join((_field(3, inner), header, data_key, data))


@functools.cache
def _frame_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="chunk-frames")


def externalize(env: pb.Envelope, blobs: list[Buffer]) -> tuple[pb.Envelope, list[Buffer]]:
    """A copy of `env` whose inline tensor data all move to blobs after `blobs`, so that
    the envelope left is small whatever its tensors (many mid-size ones included)."""
    out = pb.Envelope()
    out.CopyFrom(env)
    blobs = list(blobs)
    for t in tensors_of(out):
        if not t.blob and t.data:
            blobs.append(t.data)
            t.data = b""
            t.blob = len(blobs)
    return out, blobs


class _Recycler:
    """Receive buffers for reuse. Fresh memory costs more than filling it: the kernel zeroes
    each page on first touch (60 ms and more per 100 MB on a small VM, more than the
    hash). A complete message's blobs are views of its buffers; a buffer comes back here
    once its view is gone, i.e. once nothing references the message's data any more (its
    decoded arrays are views of the blob), and a later transfer of that size fills it."""

    def __init__(self, keep_bytes: int, min_bytes: int) -> None:
        self._keep, self._min = keep_bytes, min_bytes
        self._kept = 0
        self._free: dict[int, list[np.ndarray]] = {}
        # Reentrant: a collection inside the lock may drop a view and call _give_back.
        self._lock = threading.RLock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                self._kept -= nbytes
                return free.pop()
        # Not bytearray(n): no zero-fill, and numpy asks for huge pages (fewer faults).
        return np.empty(nbytes, np.uint8)

    def lend(self, buffer: np.ndarray) -> memoryview:
        """A view of a filled buffer for a message; the buffer returns when it is gone.

        A memoryview, not an ndarray: numpy points a slice of an ndarray view at the
        buffer that owns the memory, which would let `view` die (and the buffer be
        reused) while the slice lives; whatever is made from a memoryview keeps it alive.
        """
        view = buffer[:]
        if buffer.nbytes >= self._min:
            weakref.finalize(view, self._give_back, buffer).atexit = False
        return view.data

    def _give_back(self, buffer: np.ndarray) -> None:
        with self._lock:
            if self._kept + buffer.nbytes <= self._keep:
                self._free.setdefault(buffer.nbytes, []).append(buffer)
                self._kept += buffer.nbytes


_RECYCLER = _Recycler(keep_bytes=RECYCLE_BYTES, min_bytes=CHUNK_BYTES)


@dataclass
class _Transfer:
    head: pb.Head
    buffers: list[np.ndarray]
    views: list[memoryview]
    next_index: list[int]
    remaining: int
    wire_bytes: int
    started: float
    frames: int = 1
    repeats: int = 0
    """Chunks received again (an at-least-once transport redelivers each at most once)."""

    @property
    def declared_bytes(self) -> int:
        return sum(self.head.blob_bytes)

    @property
    def chunks(self) -> int:
        return sum(_chunk_count(n, self.head.chunk_bytes) for n in self.head.blob_bytes)


@dataclass(frozen=True)
class Received:
    """A whole message and what it cost on the wire (all its frames)."""

    message: Message
    wire_bytes: int
    frames: int

    @property
    def envelope(self) -> pb.Envelope:
        return self.message.envelope


class InFlight:
    """Bytes that every sender's open transfers declared together, against one budget: a
    receiver of many senders holds at most `limit` for messages not yet complete,
    however many senders there are (thread-safe: senders are read concurrently)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def reserve(self, nbytes: int) -> bool:
        with self._lock:
            if self._held + nbytes > self.limit:
                return False
            self._held += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._held -= nbytes


@dataclass
class Reassembler:
    """Reads the frames of one sender.

    What one sender can make it hold is bounded: open transfers whose declared sizes add
    up to at most `max_message_bytes` (one largest message in flight, not
    `MAX_OPEN_TRANSFERS` of them), each chunk repeated at most once per transfer on
    average; `expire` drops the transfers that are too slow, `close` all of them."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    clock: Callable[[], float] = time.monotonic
    budget: InFlight | None = None
    """Shared with the receiver's other senders; None: this sender's own limit only."""
    _open: dict[int, _Transfer] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    """Held by `feed` and `close`: a feed running in a worker thread while the link ends
    finishes before the transfers are given back, and none starts afterwards."""
    _closed: bool = False
    _done: collections.OrderedDict[int, None] = field(default_factory=collections.OrderedDict)

    def feed(self, raw: bytes, wire_bytes: int) -> Received | None:
        """Add one serialized frame; returns the message once complete. Raises `Rejection`."""
        with self._lock:
            if self._closed:
                raise errors.invalid("frame for a closed link")
            return self._feed(raw, wire_bytes)

    def _feed(self, raw: bytes, wire_bytes: int) -> Received | None:
        chunk = _parse_chunk_frame(raw)
        if chunk is not None:
            return self._feed_chunk(chunk, wire_bytes)
        frame = parse_frame(raw)
        kind = frame.WhichOneof("kind")
        if kind == "envelope":
            _check_blob_refs(frame.envelope, 0)
            if self._repeat(frame.message_id):
                return None
            self._remember(frame.message_id)
            return Received(Message(frame.envelope), wire_bytes, 1)
        if kind == "head":
            if not self._repeat(frame.head.transfer_id):
                self._start(frame.head, wire_bytes)
            return None
        if kind == "chunk":
            c = frame.chunk
            return self._feed_chunk(
                _ChunkView(c.transfer_id, c.blob, c.index, c.xxh3_64, c.data), wire_bytes
            )
        raise errors.invalid("frame carries no envelope, head or chunk")

    def _start(self, head: pb.Head, wire_bytes: int) -> None:
        sizes = list(head.blob_bytes)
        total = sum(sizes)
        if total > self.max_message_bytes:
            raise errors.too_large(
                f"transfer {head.transfer_id} declares {total} bytes, above this receiver's "
                f"maximum of {self.max_message_bytes}"
            )
        if not 0 < len(sizes) <= MAX_BLOBS or head.chunk_bytes < MIN_CHUNK_BYTES:
            raise errors.invalid(
                f"transfer {head.transfer_id}: bad head ({len(sizes)} blobs, chunks of "
                f"{head.chunk_bytes} bytes)"
            )
        if head.transfer_id in self._open or len(self._open) >= MAX_OPEN_TRANSFERS:
            raise errors.too_large(
                f"transfer {head.transfer_id} is already open, or more than "
                f"{MAX_OPEN_TRANSFERS} transfers are open at once from one sender"
            )
        in_flight = sum(t.declared_bytes for t in self._open.values())
        if in_flight + total > self.max_message_bytes:
            raise errors.too_large(
                f"transfer {head.transfer_id} declares {total} bytes while {in_flight} are "
                f"still in flight from this sender; at most {self.max_message_bytes} at once"
            )
        _check_blob_refs(head.envelope, len(sizes))
        if self.budget is not None and not self.budget.reserve(total):
            raise errors.too_large(
                f"transfer {head.transfer_id} of {total} bytes: this receiver already holds "
                f"{self.budget.held} bytes of incomplete messages (limit {self.budget.limit}); "
                "retry shortly"
            )
        buffers = [_RECYCLER.take(n) for n in sizes]
        t = _Transfer(
            head,
            buffers,
            [b.data for b in buffers],
            [0] * len(sizes),
            sum(_chunk_count(n, head.chunk_bytes) for n in sizes),
            wire_bytes,
            self.clock(),
        )
        self._open[head.transfer_id] = t
        if t.remaining == 0:
            self._drop(head.transfer_id)
            raise errors.invalid(f"transfer {head.transfer_id} has only empty blobs")

    def _repeat(self, message_id: int) -> bool:
        """Whether `message_id` is a message completed or under way (then it is logged)."""
        if not message_id or (message_id not in self._done and message_id not in self._open):
            return False
        log.info("dropped a repeat of message %d (redelivered by the transport)", message_id)
        return True

    def _remember(self, message_id: int) -> None:
        if message_id:
            self._done[message_id] = None
            if len(self._done) > REMEMBERED_IDS:
                self._done.popitem(last=False)

    def _feed_chunk(self, c: _ChunkView, wire_bytes: int) -> Received | None:
        t = self._open.get(c.transfer_id)
        if t is None and c.transfer_id in self._done:
            return None  # a repeat of a message already complete
        if t is None:
            raise errors.data_loss(
                f"chunk of unknown transfer {c.transfer_id}: its head was lost or refused"
            )
        if not 1 <= c.blob <= len(t.buffers):
            self._drop(c.transfer_id)
            raise errors.invalid(
                f"transfer {c.transfer_id}: chunk names blob {c.blob} of {len(t.buffers)}"
            )
        buf, expected = t.views[c.blob - 1], t.next_index[c.blob - 1]
        t.wire_bytes += wire_bytes
        t.frames += 1
        if c.index < expected:  # a repeat from an at-least-once transport
            t.repeats += 1
            if t.repeats > t.chunks:
                self._drop(c.transfer_id)
                raise errors.invalid(
                    f"transfer {c.transfer_id}: {t.repeats} chunks repeated, more than its "
                    f"{t.chunks} chunks (a redelivery repeats each at most once); transfer dropped"
                )
            return None
        start = c.index * t.head.chunk_bytes
        if start >= len(buf):
            self._drop(c.transfer_id)
            raise errors.data_loss(
                f"transfer {c.transfer_id}: chunk {c.index} is past the end of blob {c.blob} "
                f"({_chunk_count(len(buf), t.head.chunk_bytes)} chunks); transfer dropped"
            )
        want = min(t.head.chunk_bytes, len(buf) - start)
        if c.index != expected or len(c.data) != want:
            self._drop(c.transfer_id)
            raise errors.data_loss(
                f"transfer {c.transfer_id} blob {c.blob}: got chunk {c.index} of "
                f"{len(c.data)} bytes, expected chunk {expected} of {want}; transfer dropped"
            )
        data = c.data
        if _digest(data) != c.xxh3_64:
            self._drop(c.transfer_id)
            raise errors.data_loss(
                f"transfer {c.transfer_id} blob {c.blob} chunk {c.index}: xxh3_64 mismatch"
                " (corrupted in transit)"
            )
        buf[start : start + want] = data  # a memcpy that holds the GIL: no convoy behind it
        t.next_index[c.blob - 1] += 1
        t.remaining -= 1
        if t.remaining:
            return None
        self._drop(c.transfer_id)
        self._remember(c.transfer_id)
        blobs: list[Buffer] = [_RECYCLER.lend(b) for b in t.buffers]
        return Received(Message(t.head.envelope, blobs), t.wire_bytes, t.frames)

    def _drop(self, transfer_id: int) -> None:
        t = self._open.pop(transfer_id, None)
        if t is not None and self.budget is not None:
            self.budget.release(t.declared_bytes)

    def oldest_open(self) -> float | None:
        """When the oldest open transfer started (`clock`), None when none is open."""
        return min((t.started for t in self._open.values()), default=None)

    def expire(self, older_than_s: float) -> list[int]:
        """Drop the transfers open longer than `older_than_s` (their buffers go back);
        returns their ids."""
        with self._lock:
            now = self.clock()
            late = [i for i, t in self._open.items() if now - t.started > older_than_s]
            for transfer_id in late:
                self._drop(transfer_id)
            return late

    def reset(self) -> None:
        """Drop partial transfers (after a reconnect the sender starts over); completed
        ids stay remembered. Call it where no `feed` runs at the same time."""
        for transfer_id in list(self._open):
            self._drop(transfer_id)

    def close(self) -> None:
        """The link is gone: wait for a feed under way, give every open transfer's bytes
        back to the budget, and refuse later frames."""
        with self._lock:
            self._closed = True
            self.reset()


def parse_frame(raw: bytes) -> pb.Frame:
    """`raw` as a Frame; INVALID_ARGUMENT `Rejection` when it is not one."""
    frame = pb.Frame()
    try:
        frame.ParseFromString(raw)
    except Exception:  # protobuf's DecodeError and friends
        raise errors.invalid(
            f"malformed frame: {len(raw)} bytes that are not a pfl_edge.v1.Frame"
        ) from None
    return frame


@dataclass(frozen=True)
class _ChunkView:
    transfer_id: int
    blob: int
    index: int
    xxh3_64: int
    data: bytes | memoryview


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _parse_chunk_frame(raw: bytes) -> _ChunkView | None:
    """A Chunk frame read in place (its data a view of `raw`, not a copy); None when `raw`
    is not a well-formed chunk frame (then protobuf parses it and says what is wrong)."""
    buf = memoryview(raw)
    try:
        key, pos = _read_varint(buf, 0)
        if key != (3 << 3 | _LEN):
            return None
        length, pos = _read_varint(buf, pos)
        if pos + length != len(buf):
            return None
        fields: dict[int, int | memoryview] = {}
        while pos < len(buf):
            key, pos = _read_varint(buf, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                fields[number], pos = _read_varint(buf, pos)
            elif wire_type == _LEN:
                n, pos = _read_varint(buf, pos)
                if pos + n > len(buf):
                    return None
                fields[number], pos = buf[pos : pos + n], pos + n
            elif wire_type == _FIXED64 and pos + 8 <= len(buf):
                fields[number], pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
            else:
                return None
    except ValueError:
        return None
    ints = [fields.get(i, 0) for i in (1, 2, 3, 7)]
    data = fields.get(5, b"")
    if not all(isinstance(v, int) for v in ints) or isinstance(data, int):
        return None
    return _ChunkView(int(ints[0]), int(ints[1]), int(ints[2]), int(ints[3]), data)


def _chunk_count(nbytes: int, chunk_bytes: int) -> int:
    return -(-nbytes // chunk_bytes)


def _check_blob_refs(env: pb.Envelope, blobs: int) -> None:
    for t in tensors_of(env):
        if t.blob > blobs:
            raise errors.invalid(
                f"tensor {t.name!r} names blob {t.blob} but the message has {blobs}"
            )


def blob_views(blobs: Sequence[Buffer]) -> list[memoryview]:
    """Byte views of blobs, for decoding."""
    return [
        memoryview(b).cast("B")
        if not isinstance(b, np.ndarray)
        else memoryview(np.ascontiguousarray(b).data).cast("B")
        for b in blobs
    ]

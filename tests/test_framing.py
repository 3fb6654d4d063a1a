"""Chunking: reassembly, integrity, and limits checked before allocation."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from pfl_edge import codec
from pfl_edge.errors import Rejection
from pfl_edge.framing import Framer, Reassembler
from pfl_edge.v1 import messages_pb2 as pb


def big_envelope(n_floats: int = 300_000) -> pb.Envelope:
    a = np.random.default_rng(0).normal(size=n_floats).astype(np.float32)
    return pb.Envelope(agent_id="a", round=3, result=pb.Result(tensors=[codec.encode("w", a)]))


def test_small_envelope_travels_in_one_frame() -> None:
    env = pb.Envelope(agent_id="a", register=pb.Register())
    frames = list(Framer().frames(env))
    assert len(frames) == 1 and frames[0].WhichOneof("kind") == "envelope"


def test_large_envelope_is_chunked_and_reassembled_bit_exact() -> None:
    env = big_envelope()
    frames = list(Framer(chunk_bytes=64 * 1024).frames(env))
    assert len(frames) == -(-env.ByteSize() // (64 * 1024))
    r = Reassembler()
    outs = [r.feed(f, f.ByteSize()) for f in frames]
    assert all(o is None for o in outs[:-1])
    last = outs[-1]
    assert last is not None and last.frames == len(frames)
    assert last.envelope == env
    assert last.wire_bytes == sum(f.ByteSize() for f in frames)


def test_repeated_chunk_is_ignored() -> None:
    frames = list(Framer(chunk_bytes=64 * 1024).frames(big_envelope()))
    r = Reassembler()
    r.feed(frames[0], 1)
    assert r.feed(frames[0], 1) is None
    for f in frames[1:-1]:
        r.feed(f, 1)
    assert r.feed(frames[-1], 1) is not None


def test_gap_in_chunks_drops_the_transfer() -> None:
    frames = list(Framer(chunk_bytes=64 * 1024).frames(big_envelope()))
    r = Reassembler()
    r.feed(frames[0], 1)
    with pytest.raises(Rejection, match="does not continue"):
        r.feed(frames[2], 1)


def test_corrupted_chunk_fails_the_hash() -> None:
    frames = list(Framer(chunk_bytes=64 * 1024).frames(big_envelope()))
    data = bytearray(frames[1].chunk.data)
    data[10] ^= 0xFF
    frames[1].chunk.data = bytes(data)
    r = Reassembler()
    with pytest.raises(Rejection, match="sha256 mismatch"):
        for f in frames:
            r.feed(f, 1)


def test_declared_size_above_maximum_refused_without_allocating() -> None:
    chunk = pb.Chunk(transfer_id=1, index=0, count=2, total_bytes=8 << 30, sha256=b"\0" * 32,
                     data=b"x")
    r = Reassembler(max_message_bytes=1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(Rejection, match="above this receiver's maximum"):
            r.feed(pb.Frame(chunk=chunk), 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_transfer_not_starting_at_zero_refused() -> None:
    chunk = pb.Chunk(transfer_id=1, index=3, count=5, total_bytes=500, sha256=b"\0" * 32)
    with pytest.raises(Rejection, match="starts at chunk 3"):
        Reassembler().feed(pb.Frame(chunk=chunk), 1)


def test_too_many_open_transfers_refused() -> None:
    r = Reassembler()
    for i in range(4):
        r.feed(pb.Frame(chunk=pb.Chunk(transfer_id=i, index=0, count=2, total_bytes=100,
                                       sha256=b"\0" * 32, data=b"x")), 1)
    with pytest.raises(Rejection, match="more than 4"):
        r.feed(pb.Frame(chunk=pb.Chunk(transfer_id=9, index=0, count=2, total_bytes=100,
                                       sha256=b"\0" * 32, data=b"x")), 1)


def test_empty_frame_refused() -> None:
    with pytest.raises(Rejection, match="neither an envelope nor a chunk"):
        Reassembler().feed(pb.Frame(), 0)

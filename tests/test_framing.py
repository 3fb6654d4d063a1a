"""Framing: small messages in one frame, blobs in verified chunks, limits checked
before allocation."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np
import pytest
import xxhash

from pfl_edge import codec
from pfl_edge.accounting import ByteMeter
from pfl_edge.errors import Rejection
from pfl_edge.framing import (
    REMEMBERED_IDS,
    Framer,
    InFlight,
    Message,
    Reassembler,
    Received,
    _parse_chunk_frame,
    blob_views,
)
from pfl_edge.transport.base import Identity, TransportClosed
from pfl_edge.transport.grpc_client import GrpcClientTransport
from pfl_edge.transport.grpc_server import OFFLOAD_FRAME_BYTES, GrpcServerTransport
from pfl_edge.v1 import messages_pb2 as pb

CHUNK = 64 * 1024


def big_message(n_floats: int = 300_000) -> tuple[Message, np.ndarray]:
    a = np.random.default_rng(0).normal(size=n_floats).astype(np.float32)
    blobs: codec.Blobs = []
    env = pb.Envelope(
        agent_id="a",
        round=3,
        result=pb.Result(
            tensors=[codec.encode("w", a, blobs=blobs), codec.encode("b", a[:10], blobs=blobs)]
        ),
    )
    return Message(env, blobs), a


def frames_of(msg: Message) -> list[bytes]:
    return list(Framer(chunk_bytes=CHUNK).frames(msg))


def feed_all(frames: list[bytes], r: Reassembler | None = None) -> list[Received | None]:
    r = r or Reassembler()
    return [r.feed(f, len(f)) for f in frames]


def test_small_message_travels_in_one_frame() -> None:
    frames = frames_of(Message(pb.Envelope(agent_id="a", register=pb.Register())))
    assert len(frames) == 1
    assert pb.Frame.FromString(frames[0]).WhichOneof("kind") == "envelope"
    others = [frames_of(Message(pb.Envelope(agent_id="a", register=pb.Register()))) for _ in "ab"]
    assert {len(f[0]) for f in others} == {len(frames[0])}, "a random id of a varying size"


def test_blobs_are_chunked_and_reassembled_bit_exact() -> None:
    msg, a = big_message()
    assert len(msg.blobs) == 1 and not msg.envelope.result.tensors[0].data
    frames = frames_of(msg)
    assert len(frames) == 1 + -(-a.nbytes // CHUNK)
    outs = feed_all(frames)
    assert all(o is None for o in outs[:-1])
    last = outs[-1]
    assert last is not None
    assert last.frames == len(frames) and last.wire_bytes == sum(map(len, frames))
    tensors = codec.decode_many(last.envelope.result.tensors, last.message.blobs)
    np.testing.assert_array_equal(tensors["w"], a)
    np.testing.assert_array_equal(tensors["b"], a[:10])


def test_large_inline_tensor_is_moved_to_a_blob() -> None:
    a = np.arange(100_000, dtype=np.float32)
    env = pb.Envelope(agent_id="a", result=pb.Result(tensors=[codec.encode("w", a)]))
    frames = frames_of(Message(env))
    assert len(frames) > 2
    last = feed_all(frames)[-1]
    assert last is not None
    np.testing.assert_array_equal(
        codec.decode(last.envelope.result.tensors[0], last.message.blobs), a
    )


def test_repeated_chunk_is_ignored() -> None:
    frames = frames_of(big_message()[0])
    outs = feed_all([frames[0], frames[1], frames[1], *frames[2:]])
    assert outs[2] is None and outs[-1] is not None


def test_chunks_repeated_beyond_one_redelivery_refused() -> None:
    frames = frames_of(big_message()[0])
    chunks = len(frames) - 1
    r = Reassembler()
    feed_all(frames[:2], r)
    for _ in range(chunks):  # as many repeats as the transfer has chunks: a redelivery
        assert r.feed(frames[1], 1) is None
    with pytest.raises(Rejection, match="repeated") as e:
        r.feed(frames[1], 1)
    assert e.value.code == pb.ERROR_CODE_INVALID_ARGUMENT
    with pytest.raises(Rejection, match="unknown transfer"):  # dropped
        r.feed(frames[2], 1)


def test_chunk_past_the_end_of_its_blob_refused() -> None:
    r = Reassembler()
    head = pb.Head(transfer_id=7, envelope=pb.Envelope(), blob_bytes=[10], chunk_bytes=CHUNK)
    r.feed(pb.Frame(head=head).SerializeToString(), 1)
    past = pb.Chunk(
        transfer_id=7, blob=1, index=1, data=b"x", xxh3_64=xxhash.xxh3_64_intdigest(b"x")
    )
    with pytest.raises(Rejection, match=r"chunk 1 is past the end of blob 1 \(1 chunks\)") as e:
        r.feed(pb.Frame(chunk=past).SerializeToString(), 1)
    assert e.value.code == pb.ERROR_CODE_DATA_LOSS
    assert "-" not in e.value.reason, "no negative sizes in the reason"


def test_bytes_in_flight_from_one_sender_capped_at_one_message() -> None:
    r = Reassembler(max_message_bytes=1 << 20)
    for i in range(2):
        head = pb.Head(
            transfer_id=i, envelope=pb.Envelope(), blob_bytes=[400 << 10], chunk_bytes=CHUNK
        )
        r.feed(pb.Frame(head=head).SerializeToString(), 1)
    head = pb.Head(transfer_id=5, envelope=pb.Envelope(), blob_bytes=[400 << 10], chunk_bytes=CHUNK)
    with pytest.raises(Rejection, match="still in flight") as e:
        r.feed(pb.Frame(head=head).SerializeToString(), 1)
    assert e.value.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED


def test_slow_transfers_expire() -> None:
    now = [100.0]
    r = Reassembler(clock=lambda: now[0])
    frames = frames_of(big_message()[0])
    r.feed(frames[0], 1)
    assert r.oldest_open() == 100.0
    now[0] = 105.0
    assert r.expire(10.0) == []
    now[0] = 111.0
    transfer = pb.Frame.FromString(frames[0]).head.transfer_id
    assert r.expire(10.0) == [transfer]
    assert r.oldest_open() is None
    with pytest.raises(Rejection, match="unknown transfer"):
        r.feed(frames[1], 1)


def test_repeated_message_is_delivered_once() -> None:
    framer = Framer(chunk_bytes=CHUNK)
    small = next(framer.frames(Message(pb.Envelope(agent_id="a", register=pb.Register()))))
    big = list(framer.frames(big_message()[0]))
    outs = feed_all([small, *big, small, *big])
    assert [o is not None for o in outs].count(True) == 2
    assert outs[0] is not None and outs[len(big)] is not None


def test_repeat_of_a_head_under_way_is_ignored() -> None:
    frames = frames_of(big_message()[0])
    outs = feed_all([frames[0], frames[1], frames[0], frames[1], *frames[2:]])
    assert outs[-1] is not None


def test_a_message_forgotten_long_ago_is_delivered_again() -> None:
    framer, r = Framer(chunk_bytes=CHUNK), Reassembler()
    first = next(framer.frames(Message(pb.Envelope(agent_id="a"))))
    assert r.feed(first, 1) is not None
    for _ in range(REMEMBERED_IDS):
        assert r.feed(next(framer.frames(Message(pb.Envelope(agent_id="a")))), 1) is not None
    assert r.feed(first, 1) is not None


def test_messages_without_an_id_are_never_taken_for_repeats() -> None:
    raw = pb.Frame(envelope=pb.Envelope(agent_id="a")).SerializeToString()
    assert all(o is not None for o in feed_all([raw, raw]))


def test_gap_in_chunks_drops_the_transfer() -> None:
    frames = frames_of(big_message()[0])
    r = Reassembler()
    feed_all(frames[:2], r)
    with pytest.raises(Rejection, match="expected chunk 1"):
        r.feed(frames[3], 1)
    with pytest.raises(Rejection, match="unknown transfer"):
        r.feed(frames[4], 1)


def test_corrupted_chunk_fails_its_hash() -> None:
    frames = frames_of(big_message()[0])
    bad = bytearray(frames[2])
    bad[-10] ^= 0xFF
    with pytest.raises(Rejection, match="xxh3_64 mismatch"):
        feed_all([*frames[:2], bytes(bad)])


def test_declared_size_above_maximum_refused_without_allocating() -> None:
    head = pb.Head(transfer_id=1, envelope=pb.Envelope(), blob_bytes=[8 << 30], chunk_bytes=CHUNK)
    r = Reassembler(max_message_bytes=1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(Rejection, match="above this receiver's maximum"):
            r.feed(pb.Frame(head=head).SerializeToString(), 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_tensor_naming_a_missing_blob_refused() -> None:
    env = pb.Envelope(result=pb.Result(tensors=[codec.encode("w", np.zeros(3, np.float32))]))
    env.result.tensors[0].blob = 2
    with pytest.raises(Rejection, match="names blob 2 but the message has 0"):
        Reassembler().feed(pb.Frame(envelope=env).SerializeToString(), 1)


def test_too_many_open_transfers_refused() -> None:
    r = Reassembler()
    for i in range(4):
        head = pb.Head(transfer_id=i, envelope=pb.Envelope(), blob_bytes=[10], chunk_bytes=CHUNK)
        r.feed(pb.Frame(head=head).SerializeToString(), 1)
    head = pb.Head(transfer_id=9, envelope=pb.Envelope(), blob_bytes=[10], chunk_bytes=CHUNK)
    with pytest.raises(Rejection, match="more than 4"):
        r.feed(pb.Frame(head=head).SerializeToString(), 1)


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", pb.Frame().SerializeToString()])
def test_malformed_or_empty_frame_refused(raw: bytes) -> None:
    with pytest.raises(Rejection, match=r"malformed frame|no envelope, head or chunk"):
        Reassembler().feed(raw, 0)


def test_many_mid_size_tensors_never_make_an_oversized_frame() -> None:
    arrays = {f"t{i}": np.full(50_000, i, np.float32) for i in range(8)}
    env = pb.Envelope(agent_id="a", result=pb.Result(tensors=codec.encode_many(arrays)))
    frames = frames_of(Message(env))
    assert max(map(len, frames)) <= CHUNK + 100
    last = feed_all(frames)[-1]
    assert isinstance(last, Received)
    out = codec.decode_many(last.envelope.result.tensors, last.message.blobs)
    for name, a in arrays.items():
        np.testing.assert_array_equal(out[name], a)


def test_chunk_frames_read_in_place_match_protobuf() -> None:
    frames = frames_of(big_message()[0])
    r = Reassembler()
    r.feed(frames[0], 1)
    parsed = pb.Frame.FromString(frames[1]).chunk
    assert parsed.blob == 1 and parsed.index == 0
    assert parsed.xxh3_64 == xxhash.xxh3_64_intdigest(parsed.data)
    view = _parse_chunk_frame(frames[1])
    assert view is not None, "the in-place reader fell back to protobuf"
    assert (view.transfer_id, view.blob, view.index, view.xxh3_64) == (
        parsed.transfer_id,
        parsed.blob,
        parsed.index,
        parsed.xxh3_64,
    )
    assert isinstance(view.data, memoryview) and bytes(view.data) == parsed.data
    assert r.feed(frames[1], 1) is None  # accepted by the in-place reader


def test_receive_buffer_reused_only_once_nothing_references_it() -> None:
    def receive(scale: float) -> tuple[Received, np.ndarray]:
        msg, a = big_message(300_001)  # a size of its own: the buffer pool is shared
        a *= scale
        last = feed_all(frames_of(msg), r)[-1]
        assert last is not None
        return last, a

    def address(received: Received) -> int:
        return int(np.asarray(received.message.blobs[0]).__array_interface__["data"][0])

    r = Reassembler()
    first, a = receive(1.0)
    first_at = address(first)
    held = codec.decode_many(first.envelope.result.tensors, first.message.blobs)["w"]
    raw = np.asarray(first.message.blobs[0])[:64].copy()
    sliced = np.asarray(first.message.blobs[0])[:64]  # a slice of the blob, not via codec
    del first  # the decoded array and the slice still reference the buffer
    second, _ = receive(2.0)
    second_at = address(second)
    assert second_at != first_at
    np.testing.assert_array_equal(held, a)  # not overwritten by the second transfer
    np.testing.assert_array_equal(sliced, raw)
    del held, sliced, second
    third, c = receive(3.0)
    assert address(third) in (first_at, second_at)  # a buffer nothing references any more
    out = codec.decode_many(third.envelope.result.tensors, third.message.blobs)["w"]
    np.testing.assert_array_equal(out, c)


class _Echo:
    """Inbound that answers every message with the sizes of its blobs, and records ends."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.disconnects: list[str] = []

    def on_message(
        self, peer: str | None, msg: Message, identity: Identity | None = None
    ) -> Future[list[Message]]:
        self.messages.append(msg)
        fut: Future[list[Message]] = Future()
        sizes = [v.nbytes for v in blob_views(msg.blobs)]
        fut.set_result([Message(pb.Envelope(agent_id=msg.envelope.agent_id, round=sum(sizes)))])
        return fut

    def on_disconnect(self, agent_id: str, reason: str) -> None:
        self.disconnects.append(reason)


@pytest.fixture
def grpc_link() -> Iterator[tuple[_Echo, GrpcClientTransport]]:
    inbound = _Echo()
    server = GrpcServerTransport("127.0.0.1:0", ByteMeter(), chunk_bytes=CHUNK)
    server.start(inbound)
    client = GrpcClientTransport(f"127.0.0.1:{server.port}", ByteMeter(), chunk_bytes=CHUNK)
    client.connect(10)
    # Chunked transfers need a registered stream: the echo accepts any Register.
    client.send(Message(pb.Envelope(agent_id="a", register=pb.Register())))
    assert client.recv(10) is not None
    try:
        yield inbound, client
    finally:
        client.close()
        server.stop()


def test_chunks_verified_off_the_event_loop_arrive_bit_exact(
    grpc_link: tuple[_Echo, GrpcClientTransport],
) -> None:
    inbound, client = grpc_link
    assert CHUNK >= OFFLOAD_FRAME_BYTES  # these chunk frames take the worker-thread path
    for n in (300_000, 1000):  # many chunks, then one small enough to be a single frame
        msg, a = big_message(n)
        client.send(msg)
        reply = client.recv(10)
        assert reply is not None
        assert reply.envelope.round == sum(v.nbytes for v in blob_views(msg.blobs))
        got = inbound.messages[-1]
        np.testing.assert_array_equal(
            codec.decode_many(got.envelope.result.tensors, got.blobs)["w"], a
        )


def test_corrupted_chunk_over_grpc_ends_the_stream_with_data_loss(
    grpc_link: tuple[_Echo, GrpcClientTransport],
) -> None:
    inbound, client = grpc_link
    frames = frames_of(big_message()[0])
    bad = bytearray(frames[3])
    bad[-10] ^= 0xFF
    for raw in (*frames[:3], bytes(bad), *frames[4:]):
        try:
            client.send_raw(raw)
        except TransportClosed:
            break  # the stream already ended: the frames left have nowhere to go
    with pytest.raises(TransportClosed, match="xxh3_64 mismatch") as err:
        client.recv(10)
    assert err.value.code == pb.ERROR_CODE_DATA_LOSS
    assert [m.kind for m in inbound.messages] == ["register"]  # the broken one never arrived


def test_send_after_the_stream_ended_raises_instead_of_waiting(
    grpc_link: tuple[_Echo, GrpcClientTransport],
) -> None:
    _, client = grpc_link
    client.send_raw(b"\xff\xfe this is not a frame")
    with pytest.raises(TransportClosed, match="malformed frame"):
        client.recv(10)
    msg, _ = big_message()  # more frames than the outbox holds
    with pytest.raises(TransportClosed, match="malformed frame"):
        client.send(msg)


def test_a_slice_of_a_received_blob_keeps_its_buffer_from_reuse() -> None:
    r = Reassembler()
    msg, _ = big_message(300_003)  # a size of its own: the buffer pool is shared
    first = feed_all(frames_of(msg), r)[-1]
    assert first is not None
    sliced = np.asarray(first.message.blobs[0])[:4096]
    kept = sliced.copy()
    del first  # the slice alone references the buffer now
    msg, _ = big_message(300_003)
    np.asarray(msg.blobs[0])[:] = 7
    second = feed_all(frames_of(msg), r)[-1]
    assert second is not None
    np.testing.assert_array_equal(sliced, kept)


def test_senders_share_one_in_flight_budget_given_back_on_completion_and_reset() -> None:
    budget = InFlight(limit=600_000)
    msg, _ = big_message(100_000)  # 400 kB of blobs
    first, second = Reassembler(budget=budget), Reassembler(budget=budget)
    frames = frames_of(msg)
    first.feed(frames[0], 1)
    assert budget.held == 400_000
    with pytest.raises(Rejection, match="already holds 400000 bytes") as e:
        second.feed(frames_of(msg)[0], 1)
    assert e.value.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
    assert feed_all(frames[1:], first)[-1] is not None
    assert budget.held == 0, "a complete message gives its bytes back"
    second.feed(frames_of(msg)[0], 1)
    second.reset()  # the link is gone
    assert budget.held == 0

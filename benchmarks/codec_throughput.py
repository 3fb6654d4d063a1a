"""Codec and gRPC transfer throughput.

Measures, for 1 MB .. 100 MB float32 tensors, encode+decode speed of each wire encoding
(as messages carry them: data in a blob; decode ends with a float32 array),
then a 100 MB tensor through pfl-edge's chunked gRPC stream beside a plain gRPC stream
of 1 MiB bytes messages (the same loopback, the same run, the two kinds of transfer taken
alternately; medians). Writes benchmarks/results/codec.json.

    python benchmarks/codec_throughput.py [--sizes-mb 1 10 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from pfl_edge import codec
from pfl_edge.accounting import ByteMeter
from pfl_edge.constants import CHUNK_BYTES
from pfl_edge.framing import Message
from pfl_edge.transport.base import Identity
from pfl_edge.transport.credentials import TlsFiles
from pfl_edge.transport.grpc_client import GrpcClientTransport
from pfl_edge.transport.grpc_server import GrpcServerTransport
from pfl_edge.v1 import messages_pb2 as pb
from pfl_edge.v1 import tensor_pb2 as tpb

RESULTS = Path(__file__).parent / "results" / "codec.json"
MB = 1_000_000


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def to_float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32, copy=False)


def codec_rows(sizes_mb: list[int], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for size in sizes_mb:
        n = size * MB // 4
        array = np.random.default_rng(0).normal(size=(n // 1000, 1000)).astype(np.float32)
        for wire in codec.WIRE_FORMATS:
            blobs: codec.Blobs = []
            encoded = codec.encode("x", array, wire, blobs)

            def encode_once(a: np.ndarray = array, w: codec.WireFormat = wire) -> tpb.Tensor:
                return codec.encode("x", a, w, [])

            def decode_once(t: tpb.Tensor = encoded, b: codec.Blobs = blobs) -> np.ndarray:
                return to_float32(codec.decode(t, b))

            enc_s = timed(encode_once, repeats)
            dec_s = timed(decode_once, repeats)
            row = {
                "size_mb": size,
                "encoding": wire,
                "encoded_bytes": codec.encoded_bytes(encoded, blobs),
                "encode_mb_s": size / enc_s,
                "decode_mb_s": size / dec_s,
                "encode_decode_mb_s": size / (enc_s + dec_s),
            }
            rows.append(row)
            print(
                f"  {size:4d} MB {wire:8s} encode {row['encode_mb_s']:9.0f} MB/s, decode "
                f"{row['decode_mb_s']:9.0f} MB/s",
                flush=True,
            )
    return rows


class _Sink:
    """Inbound that takes any Register, decodes each arriving result and answers every
    message with an empty acknowledgement."""

    def on_message(
        self, peer: str | None, msg: Message, identity: Identity | None = None
    ) -> Future[list[Message]]:
        env = msg.envelope
        if env.HasField("result"):
            codec.decode_many(env.result.tensors, msg.blobs)
        fut: Future[list[Message]] = Future()
        fut.set_result(
            [Message(pb.Envelope(agent_id=env.agent_id, round=env.round, metrics=pb.Metrics()))]
        )
        return fut

    def on_disconnect(self, agent_id: str, reason: str) -> None:
        pass


def _serve_pfl(size_mb: int, tls: TlsFiles | None, ports: Any, stop: Any) -> None:
    server = GrpcServerTransport(
        "127.0.0.1:0", ByteMeter(), max_message_bytes=2 * size_mb * MB, tls=tls
    )
    server.start(_Sink())
    ports.put(server.port)
    stop.wait()
    server.stop()


def _serve_plain(ports: Any, stop: Any) -> None:
    def receive(requests: Iterator[bytes], _ctx: grpc.ServicerContext) -> bytes:
        for _ in requests:
            pass
        return b""

    server = grpc.server(
        ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 2 * CHUNK_BYTES)]
    )
    handler = grpc.method_handlers_generic_handler(
        "bench.Plain", {"Send": grpc.stream_unary_rpc_method_handler(receive)}
    )
    server.add_generic_rpc_handlers((handler,))
    ports.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    stop.wait()
    server.stop(0)


def _in_child(target: Callable[..., None], *args: Any) -> tuple[Any, int, Any]:
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ports, stop), daemon=True)
    proc.start()
    return proc, int(ports.get(timeout=60)), stop


@contextlib.contextmanager
def pfl_stream(
    size_mb: int, server_tls: TlsFiles | None = None, client_tls: TlsFiles | None = None
) -> Iterator[Callable[[], None]]:
    """Moves one tensor to another process through pfl-edge's gRPC transport (encode,
    chunk with XXH3-64, send, reassemble and verify, decode, acknowledge); over TLS with
    the transports' TLS files."""
    proc, port, stop = _in_child(_serve_pfl, size_mb, server_tls)
    client = GrpcClientTransport(f"127.0.0.1:{port}", ByteMeter(), tls=client_tls)
    client.connect(10)
    client.send(Message(pb.Envelope(agent_id="bench", register=pb.Register())))
    if client.recv(10) is None:  # a stream sends chunks once it has registered
        raise RuntimeError("registration not acknowledged")
    array = np.random.default_rng(0).normal(size=size_mb * MB // 4).astype(np.float32)

    def once() -> None:
        blobs: codec.Blobs = []
        env = pb.Envelope(
            agent_id="bench",
            round=1,
            result=pb.Result(tensors=[codec.encode("w", array, blobs=blobs)]),
        )
        client.send(Message(env, blobs))
        if client.recv(120) is None:
            raise RuntimeError("no acknowledgement")

    try:
        yield once
    finally:
        client.close()
        stop.set()
        proc.join(10)


@contextlib.contextmanager
def plain_stream(size_mb: int) -> Iterator[Callable[[], None]]:
    """Moves the same bytes to another process as a plain gRPC stream of 1 MiB bytes
    messages (the call returns when the server has read them all)."""
    proc, port, stop = _in_child(_serve_plain)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 2 * CHUNK_BYTES)]
    )
    send = channel.stream_unary(
        "/bench.Plain/Send", request_serializer=None, response_deserializer=None
    )
    payload = np.random.default_rng(0).bytes(size_mb * MB)

    def once() -> None:
        send(payload[i : i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES))

    try:
        yield once
    finally:
        channel.close()
        stop.set()
        proc.join(10)


def alternate(onces: Sequence[Callable[[], None]], repeats: int) -> list[list[float]]:
    """Seconds per call of each of `onces`, taken alternately (one of each, `repeats`
    times, after one warm-up call each) so that all see the same load on a shared
    machine."""
    for once in onces:
        once()  # warm-up: flow-control windows grow, receive buffers exist
    times: list[list[float]] = [[] for _ in onces]
    for _ in range(repeats):
        for once, took in zip(onces, times, strict=True):
            start = time.perf_counter()
            once()
            took.append(time.perf_counter() - start)
    return times


def pair_ratios(a_s: Sequence[float], b_s: Sequence[float]) -> list[float]:
    """Speed of kind a over kind b (b's seconds over a's) per alternated pair, sorted."""
    return sorted(round(b / a, 3) for a, b in zip(a_s, b_s, strict=True))


def transfer_s(size_mb: int, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per transfer, pfl-edge and plain, taken alternately."""
    with pfl_stream(size_mb) as pfl_once, plain_stream(size_mb) as plain_once:
        ours, plain = alternate([pfl_once, plain_once], repeats)
    return ours, plain


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--transfer-mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--transfer-repeats", type=int, default=7, help="timed transfers of each kind"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    print("codec (float32 input, decoded to float32):", flush=True)
    rows = codec_rows(args.sizes_mb, args.repeats)
    print(f"gRPC transfer of {args.transfer_mb} MB on loopback:", flush=True)
    ours_s, plain_s = transfer_s(args.transfer_mb, args.transfer_repeats)
    ours, plain = statistics.median(ours_s), statistics.median(plain_s)
    transfer = {
        "size_mb": args.transfer_mb,
        "transfers_each": args.transfer_repeats,
        "pfl_edge_mb_s": args.transfer_mb / ours,
        "plain_grpc_bytes_stream_mb_s": args.transfer_mb / plain,
        "ratio": plain / ours,
        "pair_ratios": pair_ratios(ours_s, plain_s),
    }
    print(
        f"  pfl-edge chunked stream {transfer['pfl_edge_mb_s']:.0f} MB/s, plain gRPC bytes "
        f"stream {transfer['plain_grpc_bytes_stream_mb_s']:.0f} MB/s, ratio "
        f"{transfer['ratio']:.2f} (target >= 0.5; per pair {min(transfer['pair_ratios']):.2f}"
        f" .. {max(transfer['pair_ratios']):.2f})",
        flush=True,
    )
    result = {
        "command": "python benchmarks/codec_throughput.py "
        + " ".join(
            f"--sizes-mb {' '.join(map(str, args.sizes_mb))} --repeats {args.repeats} "
            f"--transfer-repeats {args.transfer_repeats}".split()
        ),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "grpcio": grpc.__version__,
        },
        "codec": rows,
        "min_decode_mb_s": min(r["decode_mb_s"] for r in rows),
        "grpc_transfer": transfer,
        "targets": {"decode_mb_s_at_least": 1000, "transfer_ratio_at_least": 0.5},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

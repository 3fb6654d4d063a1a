"""Tensor codec: round trips, zero-copy decode, and refusal of inconsistent tensors."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest

from pfl_edge import codec
from pfl_edge.errors import Rejection
from pfl_edge.v1 import messages_pb2 as pb
from pfl_edge.v1 import tensor_pb2 as tpb


@pytest.mark.parametrize("shape", [(500, 10), (3, 100), (7,), (2, 3, 4, 5), (0, 10)])
def test_float_round_trips_within_encoding_precision(shape: tuple[int, ...]) -> None:
    a = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(codec.decode(codec.encode("x", a, "float32")), a)
    np.testing.assert_allclose(codec.decode(codec.encode("x", a, "float16")), a, atol=4e-3)
    q = codec.decode(codec.encode("x", a, "int8"))
    assert q.dtype == np.float32 and q.shape == a.shape
    if a.size:
        rows = a.reshape(a.shape[0], -1)
        spread = (
            (rows.max() - rows.min())
            if rows.shape[1] < codec.PER_ROW_MIN_ELEMENTS
            else (rows.max(axis=1) - rows.min(axis=1)).max()
        )
        assert np.abs(q - a).max() <= spread / 255 * 0.51 + 1e-6


def test_int8_uses_one_scale_per_row_for_long_rows_and_one_per_tensor_for_short() -> None:
    long_rows = codec.encode("x", np.ones((4, 100), np.float32), "int8")
    short_rows = codec.encode("x", np.ones((400, 10), np.float32), "int8")
    assert len(long_rows.scale) == 4 * 4
    assert len(short_rows.scale) == 4
    assert len(short_rows.SerializeToString()) < 400 * 10 + 64


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int32, np.int8])
def test_integer_arrays_travel_unchanged(dtype: type) -> None:
    a: np.ndarray = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    out = codec.decode(codec.encode("i", a, "int8"))
    assert out.dtype == a.dtype
    np.testing.assert_array_equal(out, a)


def test_raw_decode_is_a_view_of_the_message_bytes() -> None:
    t = codec.encode("x", np.arange(1000, dtype=np.float32))
    out = codec.decode(t)
    assert not out.flags.owndata and not out.flags.writeable
    assert isinstance(out.base, bytes | memoryview) or out.base is not None


def test_mismatched_byte_count_refused() -> None:
    t = codec.encode("x", np.zeros((10, 10), np.float32))
    t.data = t.data[:-1]
    with pytest.raises(Rejection, match="399 bytes do not match shape") as e:
        codec.decode(t)
    assert e.value.code == pb.ERROR_CODE_INVALID_ARGUMENT


def test_huge_declared_shape_refused_before_allocation() -> None:
    t = tpb.Tensor(
        name="x",
        dtype=tpb.DTYPE_FLOAT32,
        shape=[1 << 20, 1 << 20],
        encoding=tpb.ENCODING_RAW,
        data=b"\0" * 16,
    )
    with pytest.raises(Rejection, match="above the limit") as e:
        codec.decode(t)
    assert e.value.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED


@pytest.mark.parametrize("shape", [[0, 1 << 63], [1 << 40, 0], [0] * 9])
def test_absurd_shape_refused_as_invalid_argument(shape: list[int]) -> None:
    t = tpb.Tensor(name="x", dtype=tpb.DTYPE_FLOAT32, shape=shape, encoding=tpb.ENCODING_RAW)
    with pytest.raises(Rejection, match="dimension") as e:
        codec.decode(t)
    assert e.value.code == pb.ERROR_CODE_INVALID_ARGUMENT


def test_int8_with_wrong_scale_length_refused() -> None:
    t = codec.encode("x", np.ones((4, 100), np.float32), "int8")
    t.scale = t.scale[:8]
    with pytest.raises(Rejection, match="int8 affine sizes"):
        codec.decode(t)


def test_non_finite_values_refused_when_asked() -> None:
    a = np.ones((3, 3), np.float32)
    a[1, 1] = np.nan
    t = codec.encode("x", a)
    assert np.isnan(codec.decode(t)).any()
    with pytest.raises(Rejection, match="NaN or Inf"):
        codec.decode(t, require_finite=True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        codec.encode("x", a, "int8")


def test_unknown_dtype_and_encoding_refused() -> None:
    with pytest.raises(Rejection, match="unknown dtype"):
        codec.decode(
            tpb.Tensor(name="x", dtype=cast(tpb.DType, 99), shape=[1], encoding=tpb.ENCODING_RAW)
        )
    with pytest.raises(Rejection, match="unknown encoding"):
        codec.decode(
            tpb.Tensor(
                name="x",
                dtype=tpb.DTYPE_FLOAT32,
                shape=[1],
                encoding=cast(tpb.Encoding, 7),
                data=b"\0" * 4,
            )
        )
    with pytest.raises(ValueError, match="cannot travel"):
        codec.encode("x", np.zeros(2, np.complex64))


def test_repeated_tensor_name_refused() -> None:
    ts = codec.encode_many({"a": np.zeros(2, np.float32)}) * 2
    with pytest.raises(Rejection, match="appears twice"):
        codec.decode_many(ts)

"""Tensor codec: numpy arrays to pfl_edge.v1.Tensor and back.

Large data can travel as a blob of the message (see pfl_edge.framing) instead of inside
the protobuf: pass `blobs` to `encode`, and the message's blobs to `decode`.

Encodings: float32 and float16 raw (decode is a zero-copy view of the message bytes),
and int8 with an affine scale and offset per row (first axis), about 4x smaller than
float32. Rows shorter than `PER_ROW_MIN_ELEMENTS` (soft predictions: one row of C
classes per sample) share one scale for the whole tensor, since 8 bytes of scale per
row would cost more than the row. Every size is checked against the declared shape
before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from pfl_edge import errors
from pfl_edge.constants import MAX_TENSOR_ELEMENTS
from pfl_edge.v1 import tensor_pb2 as tpb

WireFormat = Literal["float32", "float16", "int8"]
WIRE_FORMATS: tuple[WireFormat, ...] = ("float32", "float16", "int8")

PER_ROW_MIN_ELEMENTS = 64
"""int8 rows at least this long get their own scale and offset."""

BLOB_MIN_BYTES = 64 << 10
"""Tensor data at least this large goes to a blob when the caller offers a blob list."""

Blobs = list[bytes | bytearray | memoryview | np.ndarray]

_DTYPES: dict[int, np.dtype[np.generic]] = {
    tpb.DTYPE_FLOAT32: np.dtype("<f4"),
    tpb.DTYPE_FLOAT16: np.dtype("<f2"),
    tpb.DTYPE_INT8: np.dtype("i1"),
    tpb.DTYPE_UINT8: np.dtype("u1"),
    tpb.DTYPE_INT32: np.dtype("<i4"),
    tpb.DTYPE_INT64: np.dtype("<i8"),
}
_CODES = {dt.newbyteorder("=") if dt.itemsize > 1 else dt: code for code, dt in _DTYPES.items()}


def dtype_code(dtype: npt.DTypeLike) -> int:
    """The wire DType for a numpy dtype; ValueError for unsupported ones."""
    dt = np.dtype(dtype)
    try:
        return _CODES[dt.newbyteorder("=") if dt.itemsize > 1 else dt]
    except KeyError:
        raise ValueError(
            f"dtype {dt} cannot travel; use one of {sorted(str(d) for d in _DTYPES.values())}"
        ) from None


def encode(
    name: str, array: npt.ArrayLike, wire: WireFormat | None = None, blobs: Blobs | None = None
) -> tpb.Tensor:
    """Encode an array. `wire` picks float32/float16/int8 for float input; None keeps its dtype.

    With `blobs`, data of at least BLOB_MIN_BYTES is appended there (without a copy when
    the array already has the wire dtype) and the tensor names it.
    """
    arr = np.asarray(array)
    if wire is None or not np.issubdtype(arr.dtype, np.floating):
        t, data = _raw(name, arr, arr.dtype)
    elif wire == "float32":
        t, data = _raw(name, arr, np.dtype("<f4"))
    elif wire == "float16":
        t, data = _raw(name, arr, np.dtype("<f2"))
    elif wire == "int8":
        t, data = _affine_int8(name, arr)
    else:
        raise ValueError(f"unknown wire format {wire!r}; use one of {WIRE_FORMATS}")
    if blobs is not None and data.nbytes >= BLOB_MIN_BYTES:
        blobs.append(data)
        t.blob = len(blobs)
    else:
        t.data = data.tobytes()
    return t


def _raw(name: str, arr: np.ndarray, dtype: np.dtype[np.generic]) -> tuple[tpb.Tensor, np.ndarray]:
    code = dtype_code(dtype)
    data = np.ascontiguousarray(arr, dtype=_DTYPES[code])
    t = tpb.Tensor(
        name=name, dtype=cast(tpb.DType, code), shape=list(arr.shape), encoding=tpb.ENCODING_RAW
    )
    return t, data


def _affine_int8(name: str, arr: np.ndarray) -> tuple[tpb.Tensor, np.ndarray]:
    n_rows = arr.shape[0] if arr.ndim else 1
    n_cols = math.prod(arr.shape[1:]) if arr.ndim else 1
    rows = np.ascontiguousarray(arr, dtype=np.float32).reshape(n_rows, n_cols)
    if rows.size and not np.isfinite(rows).all():
        raise ValueError(f"tensor {name!r} has NaN or Inf values; int8 encoding needs finite ones")
    per_row = n_cols >= PER_ROW_MIN_ELEMENTS
    if rows.size == 0:
        lo = hi = np.zeros(n_rows if per_row else 1, dtype=np.float32)
    elif per_row:
        lo, hi = rows.min(axis=1), rows.max(axis=1)
    else:
        lo, hi = rows.min(keepdims=True).ravel(), rows.max(keepdims=True).ravel()
    scale = ((hi - lo) / 255.0).astype(np.float32)
    scale[scale == 0] = 1.0
    offset = (lo + 128.0 * scale).astype(np.float32)
    q = np.rint((rows - offset[:, None]) / scale[:, None])
    codes = np.clip(q, -128, 127).astype(np.int8)
    t = tpb.Tensor(
        name=name,
        dtype=tpb.DTYPE_FLOAT32,
        shape=list(arr.shape),
        encoding=tpb.ENCODING_AFFINE_ROW_INT8,
        scale=scale.tobytes(),
        offset=offset.tobytes(),
    )
    return t, codes


def _checked_shape(t: tpb.Tensor, max_elements: int) -> tuple[tuple[int, ...], int]:
    shape = tuple(int(d) for d in t.shape)
    if len(shape) > 8:
        raise errors.invalid(f"tensor {t.name!r} has {len(shape)} dimensions; at most 8 allowed")
    big = [d for d in shape if d > max_elements]
    if big:  # [0, 2**63] holds no element, but no array of it can be made
        raise errors.invalid(
            f"tensor {t.name!r} has shape {list(shape)}: dimension {big[0]} is above the "
            f"limit of {max_elements}"
        )
    count = math.prod(shape)
    if count > max_elements:
        raise errors.too_large(
            f"tensor {t.name!r} declares {count} elements, above the limit of {max_elements}"
        )
    return shape, count


def decode(
    t: tpb.Tensor,
    blobs: Sequence[bytes | bytearray | memoryview | np.ndarray] = (),
    *,
    max_elements: int = MAX_TENSOR_ELEMENTS,
    require_finite: bool = False,
) -> np.ndarray:
    """Decode a Tensor; raw encodings return a view of the bytes (no copy).

    `blobs` are the message's blobs, for a tensor whose data travelled as one.
    Raises `Rejection` (INVALID_ARGUMENT / RESOURCE_EXHAUSTED) when the declared shape,
    dtype and byte lengths disagree, or when `require_finite` and a value is NaN/Inf.
    """
    shape, count = _checked_shape(t, max_elements)
    dtype = _DTYPES.get(t.dtype)
    if dtype is None:
        raise errors.invalid(f"tensor {t.name!r} has unknown dtype code {t.dtype}")
    data = _data(t, blobs)
    if t.encoding == tpb.ENCODING_RAW:
        if len(data) != count * dtype.itemsize:
            raise errors.invalid(
                f"tensor {t.name!r}: {len(data)} bytes do not match shape {list(shape)} "
                f"of {dtype.name} ({count * dtype.itemsize} bytes expected)"
            )
        out = np.frombuffer(data, dtype=dtype).reshape(shape)
    elif t.encoding == tpb.ENCODING_AFFINE_ROW_INT8:
        out = _decode_affine(t, data, shape, count)
    else:
        raise errors.invalid(f"tensor {t.name!r} has unknown encoding code {t.encoding}")
    if require_finite and np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
        raise errors.invalid(f"tensor {t.name!r} contains NaN or Inf values")
    return out


def _data(t: tpb.Tensor, blobs: Sequence[bytes | bytearray | memoryview | np.ndarray]) -> Any:
    if not t.blob:
        return t.data
    if t.data or t.blob > len(blobs):
        raise errors.invalid(
            f"tensor {t.name!r} names blob {t.blob} (of {len(blobs)}) and has "
            f"{len(t.data)} inline bytes"
        )
    blob = blobs[t.blob - 1]
    return memoryview(
        np.ascontiguousarray(blob).data if isinstance(blob, np.ndarray) else blob
    ).cast("B")


def _decode_affine(t: tpb.Tensor, data: Any, shape: tuple[int, ...], count: int) -> np.ndarray:
    if t.dtype != tpb.DTYPE_FLOAT32:
        raise errors.invalid(f"tensor {t.name!r}: int8 affine encoding must decode to float32")
    rows = shape[0] if shape else 1
    groups = len(t.scale) // 4
    if (
        len(data) != count
        or groups not in (1, rows)
        or len(t.scale) % 4
        or len(t.offset) != len(t.scale)
    ):
        raise errors.invalid(
            f"tensor {t.name!r}: int8 affine sizes (data {len(data)}, scale {len(t.scale)}, "
            f"offset {len(t.offset)} bytes) do not match shape {list(shape)}"
        )
    codes = np.frombuffer(data, dtype=np.int8).reshape(rows, count // rows if rows else 0)
    if rows == 0:
        return np.zeros(shape, dtype=np.float32)
    scale = np.frombuffer(t.scale, dtype="<f4")
    offset = np.frombuffer(t.offset, dtype="<f4")
    out = codes.astype(np.float32)
    out *= scale[:, None]
    out += offset[:, None]
    return out.reshape(shape)


def encoded_bytes(t: tpb.Tensor, blobs: Sequence[Any] = ()) -> int:
    """Bytes of tensor content (data or blob, scale, offset), excluding protobuf headers."""
    data = len(t.data) if not t.blob else memoryview(blobs[t.blob - 1]).nbytes
    return data + len(t.scale) + len(t.offset)


def encode_many(
    arrays: Mapping[str, npt.ArrayLike],
    wire: WireFormat | None = None,
    blobs: Blobs | None = None,
) -> list[tpb.Tensor]:
    return [encode(name, arr, wire, blobs) for name, arr in arrays.items()]


def decode_many(
    tensors: Iterable[tpb.Tensor],
    blobs: Sequence[Any] = (),
    *,
    max_elements: int = MAX_TENSOR_ELEMENTS,
    require_finite: bool = False,
) -> dict[str, np.ndarray]:
    """Decode named tensors; a repeated name is refused."""
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        if t.name in out:
            raise errors.invalid(f"tensor name {t.name!r} appears twice")
        out[t.name] = decode(t, blobs, max_elements=max_elements, require_finite=require_finite)
    return out

"""The public data set: shipped to each agent once, verified by content hash; per
round only a seed and a count travel, from which both sides derive the same indices."""

from __future__ import annotations

import hashlib

import numpy as np

from pfl_edge import errors
from pfl_edge.v1 import messages_pb2 as pb


def images_sha256(images: np.ndarray) -> str:
    """Content hash of an image set: dtype, shape and bytes."""
    h = hashlib.sha256()
    h.update(f"{images.dtype.str}:{list(images.shape)}:".encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


def describe(name: str, images: np.ndarray) -> pb.PublicDataInfo:
    """Check a uint8 image set (N, C, H, W) and describe it."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"public images must be uint8 (N, C, H, W), got {images.dtype} {list(images.shape)}"
        )
    return pb.PublicDataInfo(
        name=name,
        sha256=images_sha256(images),
        num_samples=images.shape[0],
        sample_shape=list(images.shape[1:]),
        size_bytes=images.nbytes,
    )


def indices(num_samples: int, seed: int, count: int) -> np.ndarray:
    """The round's public sample indices: first `count` of a PCG64(seed) permutation."""
    if not 0 < count <= num_samples:
        raise ValueError(f"cannot select {count} of {num_samples} public samples")
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(num_samples)
    return perm[:count].astype(np.uint32)


def _digest(idx: np.ndarray) -> bytes:
    return hashlib.sha256(idx.astype("<u4").tobytes()).digest()[:8]


def selection(num_samples: int, seed: int, count: int) -> pb.PublicSelection:
    return pb.PublicSelection(
        seed=seed, count=count, digest=_digest(indices(num_samples, seed, count))
    )


def resolve(sel: pb.PublicSelection, num_samples: int) -> np.ndarray:
    """Indices of a selection; refuses one whose digest this side does not reproduce."""
    if sel.count == 0:
        return np.zeros(0, dtype=np.uint32)
    idx = indices(num_samples, sel.seed, sel.count)
    if _digest(idx) != sel.digest:
        raise errors.invalid(
            f"public selection (seed {sel.seed}, count {sel.count}) gives different indices "
            "here than at the sender: numpy's PCG64 permutation differs between the two sides"
        )
    return idx

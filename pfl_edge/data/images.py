"""Array conventions shared by every loader: images uint8 (N, C, H, W), labels int64 (N,)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def to_float(x: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """Return model input: uint8 scaled to float32 in [0, 1]; float arrays cast to float32."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=False)
    raise ValueError(f"images must be uint8 or floating point, got dtype {x.dtype}")


def check_images(x: npt.NDArray[np.generic], what: str) -> None:
    """Raise ValueError unless ``x`` is uint8 with shape (N, C, H, W)."""
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"{what}: expected uint8 images (N, C, H, W), got {x.dtype} {x.shape}")


def check_labels(y: npt.NDArray[np.generic], n: int, what: str) -> None:
    """Raise ValueError unless ``y`` is int64 (n,) with non-negative values."""
    if y.dtype != np.int64 or y.ndim != 1:
        raise ValueError(f"{what}: expected int64 labels (N,), got {y.dtype} {y.shape}")
    if len(y) != n:
        raise ValueError(f"{what}: {len(y)} labels for {n} images")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"{what}: negative label {int(y.min())}")

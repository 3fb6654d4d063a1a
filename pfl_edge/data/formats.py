"""Loaders for the on-disk formats users have; each returns (x uint8 (N,C,H,W), y int64 (N,))."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from pfl_edge.data._npz import load_npz_arrays
from pfl_edge.data._pickle import loads_numpy
from pfl_edge.data.images import check_images, check_labels

Images = npt.NDArray[np.uint8]
Labels = npt.NDArray[np.int64]

_IDX_UBYTE = 0x08
_CHUNK = 1 << 20
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff")


class _Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...


def read_idx(path: Path) -> npt.NDArray[np.uint8]:
    """Read an IDX file of unsigned bytes (gzip-compressed or not) into an array of its shape.

    The size the header declares is checked against the file before anything that large is
    allocated: exactly for a plain file, and by reading a gzip stream in bounded chunks.
    """
    path = Path(path)
    with path.open("rb") as probe:
        compressed = probe.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as f:
            return _read_idx_stream(f, path, None if compressed else path.stat().st_size)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip stream ({exc})") from exc


def _read_idx_stream(f: _Reader, path: Path, file_size: int | None) -> npt.NDArray[np.uint8]:
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty'})")
    if magic[2] != _IDX_UBYTE:
        raise ValueError(f"{path}: IDX element type 0x{magic[2]:02x} unsupported (only 0x08 bytes)")
    ndim = magic[3]
    if not 1 <= ndim <= 4:
        raise ValueError(f"{path}: IDX header declares {ndim} dimensions (expected 1 to 4)")
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    declared = math.prod(dims)
    if file_size is not None and file_size - 4 - 4 * ndim != declared:
        raise ValueError(
            f"{path}: header declares shape {dims} ({declared} bytes of data) "
            f"but the file holds {file_size - 4 - 4 * ndim}"
        )
    buf = bytearray()
    while len(buf) < declared:
        chunk = f.read(min(_CHUNK, declared - len(buf)))
        if not chunk:
            raise ValueError(
                f"{path}: truncated: header declares shape {dims} ({declared} bytes of data) "
                f"but the stream ends after {len(buf)}"
            )
        buf += chunk
    if f.read(1):
        raise ValueError(f"{path}: more data than the header's shape {dims} declares")
    return np.frombuffer(buf, dtype=np.uint8).reshape(dims)


def load_idx(images_path: Path, labels_path: Path) -> tuple[Images, Labels]:
    """Load an MNIST-family pair of IDX files: images (N, H, W) and labels (N,)."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: expected IDX images (N, H, W), got shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected IDX labels (N,), got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images in {images_path} but {len(labels)} labels")
    return images[:, None], labels.astype(np.int64)


def load_cifar_batches(
    paths: Sequence[Path], label_key: str | None = None
) -> tuple[Images, Labels]:
    """Load and concatenate CIFAR-10/100 "python version" batches.

    Each batch is a pickled dict with ``data`` uint8 (N, 3072) and labels under ``label_key``
    (default: ``labels`` for CIFAR-10, else ``fine_labels`` for CIFAR-100). These pickles come
    from the user's own disk; they are still read with an unpickler that only admits numpy
    arrays, so a tampered file cannot run code.
    """
    if not paths:
        raise ValueError("load_cifar_batches: no batch files given")
    xs: list[Images] = []
    ys: list[Labels] = []
    for path in paths:
        batch = _cifar_dict(Path(path))
        data = np.asarray(batch.get("data"))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            got = f"{data.dtype} {data.shape}"
            raise ValueError(f"{path}: 'data' must be uint8 (N, 3072), got {got}")
        key = label_key or ("labels" if "labels" in batch else "fine_labels")
        if key not in batch:
            raise ValueError(f"{path}: no {key!r} entry; keys are {sorted(batch)}")
        labels = np.asarray(batch[key])
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(data),):
            raise ValueError(f"{path}: {key!r} must be {len(data)} integers, got {labels.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    check_labels(y, len(x), "CIFAR batches")
    return x, y


def _cifar_dict(path: Path) -> dict[str, Any]:
    obj = loads_numpy(path.read_bytes(), str(path))
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def load_image_folder(root: Path) -> tuple[Images, Labels]:
    """Load ``root/<class>/<image>``; class index = position of the folder in sorted order
    (hidden folders skipped).

    All images must have one size. Grayscale (modes 1, L, LA) everywhere gives C = 1, else
    every image is converted to RGB (C = 3). Needs Pillow.
    """
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("load_image_folder needs Pillow: pip install pillow") from exc
    root = Path(root)
    entries = root.iterdir() if root.is_dir() else iter(())
    classes = sorted(p for p in entries if p.is_dir() and not p.name.startswith("."))
    files = [
        (label, f)
        for label, d in enumerate(classes)
        for f in sorted(d.iterdir())
        if f.suffix.lower() in _IMAGE_SUFFIXES
    ]
    if not files:
        raise ValueError(f"{root}: no images found in class subfolders (root/<class>/<image>)")
    images: list[Image.Image] = []
    for _, f in files:
        try:
            with Image.open(f) as opened:
                opened.load()
                images.append(opened.copy())
        except OSError as exc:
            raise ValueError(f"{f}: cannot read image ({exc})") from exc
    gray = all(im.mode in ("1", "L", "LA") for im in images)
    size = images[0].size
    arrays = []
    for (_, f), im in zip(files, images, strict=True):
        if im.size != size:
            raise ValueError(f"{f}: size {im.size} differs from {files[0][1]}'s {size}")
        arr = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
        arrays.append(arr[None] if gray else arr.transpose(2, 0, 1))
    return np.stack(arrays), np.array([label for label, _ in files], dtype=np.int64)


def load_npz(path: Path, x_key: str = "x", y_key: str = "y") -> tuple[Images, Labels]:
    """Load images and labels from a .npz (no pickles).

    Images: uint8, or float in [0, 1] (scaled by 255 and rounded); (N, H, W) gets a channel
    axis. Labels: any integer type, cast to int64.
    """
    path = Path(path)
    arrays = load_npz_arrays(path, (x_key, y_key))
    x, y = arrays[x_key], arrays[y_key]
    if np.issubdtype(x.dtype, np.floating):
        if x.size and not (np.all(x >= 0) and np.all(x <= 1)):
            raise ValueError(f"{path}: float images must lie in [0, 1]")
        x = np.rint(x * 255).astype(np.uint8)
    if x.ndim == 3:
        x = x[:, None]
    check_images(x, f"{path}[{x_key!r}]")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}[{y_key!r}]: labels must be integers, got {y.dtype}")
    y = y.astype(np.int64)
    check_labels(y, len(x), f"{path}[{y_key!r}]")
    return x, y

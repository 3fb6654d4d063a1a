"""On-disk format loaders: IDX, CIFAR batches, image folders, .npz."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfl_edge.data import load_cifar_batches, load_idx, load_image_folder, load_npz, to_float
from pfl_edge.data.formats import read_idx


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture
def mnist_like() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), rng.integers(0, 10, 7, dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(
    tmp_path: Path, mnist_like: tuple[np.ndarray, np.ndarray], gz: bool
) -> None:
    images, labels = mnist_like
    x, y = load_idx(
        write(tmp_path / "images", idx_bytes(images), gz),
        write(tmp_path / "labels", idx_bytes(labels), gz),
    )
    assert x.dtype == np.uint8 and x.shape == (7, 1, 28, 28)
    assert y.dtype == np.int64 and y.tolist() == labels.tolist()
    np.testing.assert_array_equal(x[:, 0], images)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_bad_magic(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / "f", b"\x08\x03\x00\x00" + bytes(20), gz)
    with pytest.raises(ValueError, match=r"not an IDX file.*bad magic number"):
        read_idx(path)


def test_idx_unsupported_element_type(tmp_path: Path) -> None:
    path = write(tmp_path / "f", b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + bytes(4))
    with pytest.raises(ValueError, match="element type 0x0d"):
        read_idx(path)


def test_idx_truncated_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(write(tmp_path / "f", b"\x00\x00\x08\x03\x00\x00"))


@pytest.mark.parametrize(("cut", "match"), [(-5, "file holds 779"), (3, "file holds 787")])
def test_idx_size_mismatch_plain(tmp_path: Path, cut: int, match: str) -> None:
    data = idx_bytes(np.zeros((1, 28, 28), np.uint8))
    data = data[:cut] if cut < 0 else data + bytes(cut)
    with pytest.raises(ValueError, match=f"declares shape \\(1, 28, 28\\).*{match}"):
        read_idx(write(tmp_path / "f", data))


def test_idx_size_mismatch_gzip(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"truncated.*ends after 1000"):
        read_idx(write(tmp_path / "short.gz", data[: 16 + 1000], gz=True))
    with pytest.raises(ValueError, match="more data than"):
        read_idx(write(tmp_path / "long.gz", data + b"\x00", gz=True))


def test_idx_corrupt_gzip(tmp_path: Path) -> None:
    compressed = gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(write(tmp_path / "f.gz", compressed[: len(compressed) // 2]))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_oversize_header_refused_before_allocation(tmp_path: Path, gz: bool) -> None:
    # Declares 2**32-1 cubed bytes (~8e28) over 64 real ones.
    header = b"\x00\x00\x08\x03" + struct.pack(">3I", *(2**32 - 1,) * 3)
    path = write(tmp_path / "huge", header + bytes(64), gz)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="declares shape"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_idx_label_count_mismatch(
    tmp_path: Path, mnist_like: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_like
    with pytest.raises(ValueError, match=r"7 images .* but 6 labels"):
        load_idx(
            write(tmp_path / "i", idx_bytes(images)), write(tmp_path / "l", idx_bytes(labels[:6]))
        )


def test_idx_images_and_labels_swapped(
    tmp_path: Path, mnist_like: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_like
    i, lab = write(tmp_path / "i", idx_bytes(images)), write(tmp_path / "l", idx_bytes(labels))
    with pytest.raises(ValueError, match="expected IDX images"):
        load_idx(lab, i)


def cifar_batch(n: int, seed: int, label_key: str) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    return {
        "batch_label": "training batch",
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, 10, n).tolist(),
    }


def test_cifar_batches(tmp_path: Path) -> None:
    first, second = cifar_batch(5, 0, "labels"), cifar_batch(3, 1, "labels")
    p1 = tmp_path / "data_batch_1"
    p1.write_bytes(pickle.dumps(first, protocol=2))  # str keys, like the original Python 2 files
    p2 = tmp_path / "data_batch_2"
    p2.write_bytes(pickle.dumps({k.encode(): v for k, v in second.items()}, protocol=4))
    x, y = load_cifar_batches([p1, p2])
    assert x.shape == (8, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    data = first["data"]
    assert isinstance(data, np.ndarray)
    assert x[0, 1, 0, 0] == data[0, 1024] and x[0, 2, 31, 31] == data[0, 3071]  # R, G, B planes
    assert y.tolist() == first["labels"] + second["labels"]  # type: ignore[operator]


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    batch = cifar_batch(4, 2, "fine_labels") | {"coarse_labels": [1, 2, 3, 4]}
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps(batch))
    assert load_cifar_batches([path])[1].tolist() == batch["fine_labels"]
    assert load_cifar_batches([path], label_key="coarse_labels")[1].tolist() == [1, 2, 3, 4]


def test_cifar_bad_batches(tmp_path: Path) -> None:
    bad_shape = tmp_path / "a"
    bad_shape.write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"'data' must be uint8 \(N, 3072\)"):
        load_cifar_batches([bad_shape])
    few_labels = tmp_path / "b"
    few_labels.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}))
    with pytest.raises(ValueError, match="must be 2 integers"):
        load_cifar_batches([few_labels])
    with pytest.raises(ValueError, match="no batch files"):
        load_cifar_batches([])


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.target),)


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({"data": _Exploit(tmp_path / "pwned"), "labels": []}))
    with pytest.raises(ValueError, match=r"refusing posix.mkdir"):
        load_cifar_batches([path])
    assert not (tmp_path / "pwned").exists()


def test_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for cls, count in (("cat", 2), ("ant", 3)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            arr = rng.integers(0, 256, (12, 10), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
            arrays[(cls, i)] = arr
    (tmp_path / "notes.txt").write_text("ignored")
    x, y = load_image_folder(tmp_path)
    assert x.shape == (5, 1, 12, 10) and x.dtype == np.uint8
    assert y.tolist() == [0, 0, 0, 1, 1]  # "ant" sorts before "cat"
    np.testing.assert_array_equal(x[3, 0], arrays[("cat", 0)])


def test_image_folder_rgb_and_size_mismatch(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a" / "0.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "a" / "1.png")
    x, _ = load_image_folder(tmp_path)
    assert x.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(x[0], rgb.transpose(2, 0, 1))
    Image.fromarray(rgb[:4]).save(tmp_path / "a" / "2.png")
    with pytest.raises(ValueError, match="differs from"):
        load_image_folder(tmp_path)


def test_image_folder_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images found"):
        load_image_folder(tmp_path)


def test_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.full((3, 5, 5), 7, np.uint8), y=np.array([0, 1, 2], np.int32))
    x, y = load_npz(path)
    assert x.shape == (3, 1, 5, 5) and y.dtype == np.int64
    np.savez(path, images=np.full((2, 3, 4, 4), 0.5, np.float32), labels=np.array([1, 0]))
    x, y = load_npz(path, x_key="images", y_key="labels")
    assert x.dtype == np.uint8 and int(x.max()) == 128 and x.shape == (2, 3, 4, 4)


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 5, 5), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        load_npz(path)
    with pytest.raises(ValueError, match=r"missing \['labels'\]; keys are \['x', 'y'\]"):
        load_npz(path, y_key="labels")
    np.savez(path, x=np.full((1, 5, 5), 2.0), y=np.zeros(1, np.int64))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        load_npz(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not an .npz file"):
        load_npz(path)


def test_to_float() -> None:
    out = to_float(np.array([0, 255], np.uint8))
    assert out.dtype == np.float32 and out.tolist() == [0.0, 1.0]
    assert to_float(np.array([0.25])).dtype == np.float32
    with pytest.raises(ValueError, match="uint8 or floating"):
        to_float(np.array([1, 2]))

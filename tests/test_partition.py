"""Non-IID partitions and client files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pfl_edge.data import (
    ClientSplit,
    load_client,
    partition_classes,
    partition_dirichlet,
    save_client,
)


@pytest.fixture
def labels() -> np.ndarray:
    return np.random.default_rng(0).permutation(np.repeat(np.arange(10), 200))


def check_common(y: np.ndarray, splits: list[ClientSplit], samples: int, test: int) -> None:
    everything = np.concatenate([np.concatenate((s.train_idx, s.test_idx)) for s in splits])
    assert len(np.unique(everything)) == len(everything)  # disjoint, no sample twice
    for s in splits:
        assert s.train_idx.dtype == s.test_idx.dtype == np.int64
        assert len(s.train_idx) + len(s.test_idx) == samples and len(s.test_idx) == test
        counts = np.bincount(y[np.concatenate((s.train_idx, s.test_idx))], minlength=10)
        np.testing.assert_array_equal(counts, s.label_counts)
        # Stratified: each class's test share is its fair share, to rounding.
        test_counts = np.bincount(y[s.test_idx], minlength=10)
        assert np.all(np.abs(test_counts - s.label_counts * test / samples) < 1)
        assert not s.train_idx.flags.writeable


def test_classes_per_client(labels: np.ndarray) -> None:
    splits = partition_classes(labels, 10, 2, 100, 0.25, np.random.default_rng(1))
    check_common(labels, splits, 100, 25)
    usage = np.zeros(10, int)
    for s in splits:
        assert np.count_nonzero(s.label_counts) == 2
        assert sorted(s.label_counts[s.label_counts > 0].tolist()) == [50, 50]
        assert set(labels[s.train_idx]) == set(labels[s.test_idx])  # same classes in both
        usage += s.label_counts > 0
    assert usage.tolist() == [2] * 10  # classes dealt evenly


def test_uneven_share(labels: np.ndarray) -> None:
    splits = partition_classes(labels, 3, 3, 10, 0.3, np.random.default_rng(2))
    check_common(labels, splits, 10, 3)
    assert all(sorted(s.label_counts[s.label_counts > 0]) == [3, 3, 4] for s in splits)


def test_dirichlet_skew(labels: np.ndarray) -> None:
    def top_share(alpha: float) -> float:
        splits = partition_dirichlet(labels, 10, alpha, 100, 0.25, np.random.default_rng(3))
        check_common(labels, splits, 100, 25)
        return float(np.mean([s.label_counts.max() / 100 for s in splits]))

    assert top_share(0.05) > 0.8
    assert top_share(100.0) < 0.25


def test_reproducible(labels: np.ndarray) -> None:
    def run(seed: int) -> list[ClientSplit]:
        return partition_dirichlet(labels, 5, 0.5, 50, 0.2, np.random.default_rng(seed))

    a, b, c = run(7), run(7), run(8)
    for s, t in zip(a, b, strict=True):
        np.testing.assert_array_equal(s.train_idx, t.train_idx)
        np.testing.assert_array_equal(s.test_idx, t.test_idx)
    assert any(not np.array_equal(s.train_idx, t.train_idx) for s, t in zip(a, c, strict=True))


def test_too_few_samples(labels: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"too few samples.*needed, 200 there"):
        partition_classes(labels, 20, 1, 300, 0.25, rng)
    with pytest.raises(ValueError, match="too few samples"):
        partition_dirichlet(labels, 10, 1.0, 250, 0.25, rng)


def test_invalid_arguments(labels: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"classes_per_client must be in 1..10"):
        partition_classes(labels, 2, 11, 100, 0.25, rng)
    with pytest.raises(ValueError, match="test_fraction"):
        partition_classes(labels, 2, 2, 100, 1.0, rng)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        partition_dirichlet(labels, 2, 0.0, 100, 0.25, rng)
    with pytest.raises(ValueError, match="1-D integer"):
        partition_classes(labels.astype(float), 2, 2, 100, 0.25, rng)


def test_client_file_round_trip(tmp_path: Path, labels: np.ndarray) -> None:
    x = np.random.default_rng(0).integers(0, 256, (len(labels), 1, 4, 4), dtype=np.uint8)
    y = labels.astype(np.int64)
    split = partition_classes(y, 4, 2, 40, 0.25, np.random.default_rng(0))[1]
    path = tmp_path / "client.npz"
    save_client(path, x, y, split)
    data = load_client(path)
    np.testing.assert_array_equal(data.x_train, x[split.train_idx])
    np.testing.assert_array_equal(data.y_test, y[split.test_idx])
    assert data.x_test.dtype == np.uint8 and len(data.y_train) == 30
    assert [p.name for p in tmp_path.iterdir()] == ["client.npz"]  # no temporary left


def test_load_client_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    x = np.zeros((4, 1, 2, 2), np.uint8)
    y = np.zeros(4, np.int64)
    np.savez(path, x_train=x, y_train=y, x_test=x)
    with pytest.raises(ValueError, match=r"missing \['y_test'\]"):
        load_client(path)
    np.savez(path, x_train=x, y_train=y.astype(float), x_test=x, y_test=y)
    with pytest.raises(ValueError, match=r"y_train\]: expected int64 labels"):
        load_client(path)
    np.savez(path, x_train=x, y_train=y[:3], x_test=x, y_test=y)
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        load_client(path)
    np.savez(path, x_train=x, y_train=y, x_test=np.zeros((4, 1, 3, 3), np.uint8), y_test=y)
    with pytest.raises(ValueError, match="differ in shape"):
        load_client(path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"not an .npz file"):
        load_client(path)


def test_save_client_rejects_bad_input(tmp_path: Path, labels: np.ndarray) -> None:
    split = partition_classes(labels, 2, 2, 10, 0.2, np.random.default_rng(0))[0]
    x = np.zeros((5, 1, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="out of range"):
        save_client(tmp_path / "c.npz", x, np.zeros(5, np.int64), split)
    with pytest.raises(ValueError, match="expected uint8 images"):
        save_client(tmp_path / "c.npz", x.astype(np.float32), np.zeros(5, np.int64), split)

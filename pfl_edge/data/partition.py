"""Non-IID client partitions with a stratified per-client train/test split, and client files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from pfl_edge.data._npz import load_npz_arrays, save_npz_atomic
from pfl_edge.data.images import check_images, check_labels

Index = npt.NDArray[np.int64]
_CLIENT_KEYS = ("x_train", "y_train", "x_test", "y_test")
_DIRICHLET_TRIES = 100


@dataclass(frozen=True, eq=False)
class ClientSplit:
    """One client's share of a source: sorted, read-only indices into its arrays.

    ``label_counts[c]`` counts the client's samples (train + test) of class ``c``; its length is
    the source's ``max(y) + 1``.
    """

    train_idx: Index
    test_idx: Index
    label_counts: npt.NDArray[np.int64]


class ClientData(NamedTuple):
    """A client's private data as stored in its .npz."""

    x_train: npt.NDArray[np.uint8]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.uint8]
    y_test: npt.NDArray[np.int64]


def partition_classes(
    y: npt.NDArray[np.integer],
    num_clients: int,
    classes_per_client: int,
    samples_per_client: int,
    test_fraction: float,
    rng: np.random.Generator,
) -> list[ClientSplit]:
    """Give each client ``classes_per_client`` classes and ``samples_per_client`` samples.

    Classes are dealt round-robin from a random permutation of the classes present, so every
    class serves about equally many clients (client i gets positions i*k .. i*k+k-1, cyclic).
    A client's samples are split evenly over its classes; samples are disjoint across clients.
    """
    labels, present = _check_source(y, num_clients, samples_per_client, test_fraction)
    k = classes_per_client
    if not 1 <= k <= len(present):
        raise ValueError(f"classes_per_client must be in 1..{len(present)}, got {k}")
    if samples_per_client < k:
        raise ValueError(f"samples_per_client ({samples_per_client}) < classes_per_client ({k})")
    order = rng.permutation(present)
    share = _apportion(samples_per_client, np.ones(k))
    counts = np.zeros((num_clients, int(labels.max()) + 1), dtype=np.int64)
    for i in range(num_clients):
        for j in range(k):
            counts[i, order[(i * k + j) % len(present)]] = share[j]
    return _draw(labels, counts, test_fraction, rng)


def partition_dirichlet(
    y: npt.NDArray[np.integer],
    num_clients: int,
    alpha: float,
    samples_per_client: int,
    test_fraction: float,
    rng: np.random.Generator,
) -> list[ClientSplit]:
    """Draw each client's class proportions from Dirichlet(alpha) over the classes present.

    Class counts are Multinomial(samples_per_client, proportions); small ``alpha`` concentrates a
    client on few classes. Samples are disjoint across clients. A draw that asks more of a class
    than the source has is redrawn, up to 100 times (so the counts follow the Dirichlet
    conditioned on fitting the source).
    """
    labels, present = _check_source(y, num_clients, samples_per_client, test_fraction)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    available = np.bincount(labels)
    for _ in range(_DIRICHLET_TRIES):
        proportions = rng.dirichlet(np.full(len(present), alpha), size=num_clients)
        counts = np.zeros((num_clients, len(available)), dtype=np.int64)
        for i in range(num_clients):
            counts[i, present] = rng.multinomial(samples_per_client, proportions[i])
        if np.all(counts.sum(axis=0) <= available):
            break
    return _draw(labels, counts, test_fraction, rng)


def _check_source(
    y: npt.NDArray[np.integer], num_clients: int, samples_per_client: int, test_fraction: float
) -> tuple[Index, Index]:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) == 0:
        raise ValueError(f"labels must be a non-empty 1-D integer array, got {y.dtype} {y.shape}")
    if int(y.min()) < 0:
        raise ValueError(f"labels must be non-negative, got {int(y.min())}")
    if num_clients < 1 or samples_per_client < 1:
        raise ValueError("num_clients and samples_per_client must be >= 1")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    labels = y.astype(np.int64)
    return labels, np.unique(labels)


def _apportion(total: int, weights: npt.NDArray[np.floating]) -> Index:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder)."""
    quotas = total * weights / weights.sum()
    counts: Index = np.floor(quotas).astype(np.int64)
    remainder = total - int(counts.sum())
    counts[np.argsort(counts - quotas, kind="stable")[:remainder]] += 1
    return counts


def _draw(
    labels: Index, counts: npt.NDArray[np.int64], test_fraction: float, rng: np.random.Generator
) -> list[ClientSplit]:
    available = np.bincount(labels, minlength=counts.shape[1])
    demand = counts.sum(axis=0)
    short = np.flatnonzero(demand > available)
    if short.size:
        detail = ", ".join(f"class {c}: {demand[c]} needed, {available[c]} there" for c in short)
        raise ValueError(
            f"too few samples in the source ({detail}); lower samples_per_client or num_clients"
        )
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(counts.shape[1])]
    used = np.zeros(counts.shape[1], dtype=np.int64)
    splits = []
    for row in counts:
        n = int(row.sum())
        n_test = _apportion(int(np.floor(n * test_fraction + 0.5)), row.astype(np.float64))
        train, test = [], []
        for c in np.flatnonzero(row):
            drawn = pools[c][used[c] : used[c] + row[c]]
            used[c] += row[c]
            test.append(drawn[: n_test[c]])
            train.append(drawn[n_test[c] :])
        splits.append(ClientSplit(_sorted(train), _sorted(test), _readonly(row.copy())))
    return splits


def _sorted(parts: list[Index]) -> Index:
    return _readonly(np.sort(np.concatenate(parts)))


def _readonly(a: Index) -> Index:
    a.setflags(write=False)
    return a


def save_client(
    path: Path, x: npt.NDArray[np.uint8], y: npt.NDArray[np.int64], split: ClientSplit
) -> None:
    """Write an agent's private data (keys x_train, y_train, x_test, y_test) atomically."""
    check_images(x, "save_client x")
    check_labels(y, len(x), "save_client y")
    for idx in (split.train_idx, split.test_idx):
        if idx.size and int(idx.max()) >= len(x):
            raise ValueError(f"split index {int(idx.max())} out of range for {len(x)} samples")
    arrays = (x[split.train_idx], y[split.train_idx], x[split.test_idx], y[split.test_idx])
    save_npz_atomic(Path(path), dict(zip(_CLIENT_KEYS, arrays, strict=True)))


def load_client(path: Path) -> ClientData:
    """Read and validate a file written by :func:`save_client`."""
    path = Path(path)
    data = ClientData(**load_npz_arrays(path, _CLIENT_KEYS))
    for part in ("train", "test"):
        x, y = getattr(data, f"x_{part}"), getattr(data, f"y_{part}")
        check_images(x, f"{path}[x_{part}]")
        check_labels(y, len(x), f"{path}[y_{part}]")
    if len(data.x_train) == 0:
        raise ValueError(f"{path}: x_train is empty")
    if data.x_train.shape[1:] != data.x_test.shape[1:]:
        raise ValueError(
            f"{path}: train images {data.x_train.shape[1:]} and test images "
            f"{data.x_test.shape[1:]} differ in shape"
        )
    return data


@dataclass(frozen=True)
class PartitionSpec:
    """How `write_partitions` splits a data set's train split among agents (the options of
    `pfl-edge data partition` and `pfl-edge demo`)."""

    agents: int
    dataset: str = "mnist"
    noniid: str = "dirichlet"
    """"dirichlet" (label mix per agent drawn from Dirichlet(alpha)) or "classes"."""
    alpha: float = 0.3
    classes_per_agent: int = 2
    samples_per_agent: int = 200
    test_fraction: float = 0.25
    seed: int = 0

    @classmethod
    def from_args(cls, args: object) -> PartitionSpec:
        """From parsed command-line options of the same names."""
        return cls(**{f: getattr(args, f) for f in cls.__dataclass_fields__})


def split_dataset(spec: PartitionSpec) -> tuple[npt.NDArray[np.uint8], Index, list[ClientSplit]]:
    """The data set's train images and labels and each agent's split of them, as `spec` says."""
    from pfl_edge.data.fetch import load

    data = load(spec.dataset)
    x = np.asarray(data["x_train"], dtype=np.uint8)
    y = np.asarray(data["y_train"], dtype=np.int64)
    rng = np.random.default_rng(spec.seed)
    if spec.noniid == "dirichlet":
        splits = partition_dirichlet(
            y, spec.agents, spec.alpha, spec.samples_per_agent, spec.test_fraction, rng
        )
    else:
        splits = partition_classes(
            y, spec.agents, spec.classes_per_agent, spec.samples_per_agent, spec.test_fraction, rng
        )
    return x, y, splits


def agent_ids(count: int) -> list[str]:
    """agent-00, agent-01, ...: as many digits as the largest needs (at least two), so
    that id order is number order."""
    width = max(2, len(str(count - 1)))
    return [f"agent-{i:0{width}d}" for i in range(count)]


def write_partitions(spec: PartitionSpec, out: Path) -> list[Path]:
    """Partition the data set's train split into one <agent id>.npz per agent in `out`."""
    x, y, splits = split_dataset(spec)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for agent_id, split in zip(agent_ids(len(splits)), splits, strict=True):
        path = out / f"{agent_id}.npz"
        save_client(path, x, y, split)
        paths.append(path)
    return paths


def client_data(spec: PartitionSpec) -> list[ClientData]:
    """What `write_partitions` writes, in memory: the same arrays its files load as."""
    x, y, splits = split_dataset(spec)
    return [
        ClientData(x[s.train_idx], y[s.train_idx], x[s.test_idx], y[s.test_idx]) for s in splits
    ]

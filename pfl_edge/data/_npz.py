""".npz files: atomic writing, reading without pickles."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


def save_npz_atomic(path: Path, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Write ``arrays`` uncompressed to ``path`` via a temporary file and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # Typed loosely: mypy would match the arrays against savez's allow_pickle keyword.
    savez: Callable[..., None] = np.savez
    try:
        with os.fdopen(fd, "wb") as f:
            savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; data files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_zip(path: Path) -> None:
    with path.open("rb") as f:
        if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise ValueError(f"{path}: not an .npz file (no zip signature)")


def npz_names(path: Path) -> list[str]:
    """Names of the arrays in an .npz; ValueError for a bad file."""
    _check_zip(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return list(npz.files)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npz ({exc})") from exc


def load_npz_arrays(path: Path, keys: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
    """Read ``keys`` from an .npz without pickles; ValueError for a bad file or missing keys."""
    _check_zip(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise ValueError(f"{path}: missing {missing}; keys are {sorted(npz.files)}")
            return {k: npz[k] for k in keys}
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npz ({exc})") from exc

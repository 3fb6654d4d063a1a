"""Unpickling restricted to numpy arrays, for pickled data sets (wheels, CIFAR batches)."""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

# Everything a pickle of numpy arrays (protocols 2-5, numpy 1.x or 2.x) refers to by name;
# _codecs.encode rebuilds bytes in protocol 2 pickles written by Python 3. Nothing else is
# importable, so a crafted pickle cannot run code.
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: only numpy arrays are allowed")
        # numpy 2 renamed numpy.core to numpy._core (numpy 1.26 has both): prefer the new name,
        # which spares numpy 2 a deprecation warning.
        try:
            return getattr(
                importlib.import_module(module.replace("numpy.core", "numpy._core")), name
            )
        except ImportError:
            return getattr(importlib.import_module(module), name)


def loads_numpy(data: bytes, source: str) -> Any:
    """Unpickle ``data`` (latin1 for Python 2 pickles) allowing only numpy arrays and builtins.

    Raises ValueError naming ``source`` when the data is not such a pickle.
    """
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # unpickling garbage raises many exception types
        raise ValueError(f"{source}: not a readable pickle of numpy arrays ({exc})") from exc

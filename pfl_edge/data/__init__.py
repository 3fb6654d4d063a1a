"""Data sets, on-disk formats, non-IID partitions and client files (numpy only).

The function ``fetch`` is not re-exported: ``pfl_edge.data.fetch`` stays the module (use
``from pfl_edge.data.fetch import fetch``).
"""

from pfl_edge.data.fetch import default_cache_dir, load
from pfl_edge.data.formats import load_cifar_batches, load_idx, load_image_folder, load_npz
from pfl_edge.data.images import to_float
from pfl_edge.data.partition import (
    ClientData,
    ClientSplit,
    load_client,
    partition_classes,
    partition_dirichlet,
    save_client,
)

__all__ = [
    "ClientData",
    "ClientSplit",
    "default_cache_dir",
    "load",
    "load_cifar_batches",
    "load_client",
    "load_idx",
    "load_image_folder",
    "load_npz",
    "partition_classes",
    "partition_dirichlet",
    "save_client",
    "to_float",
]

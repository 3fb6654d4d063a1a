"""The coordinator's public data set: loaded once, encoded once, served on request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pfl_edge import public_data
from pfl_edge.v1 import messages_pb2 as pb


@dataclass(frozen=True)
class PublicSet:
    info: pb.PublicDataInfo
    images: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.info.num_samples)


def load_images(dataset: str, samples: int) -> tuple[str, np.ndarray]:
    """(name, uint8 images N x C x H x W) of the configured public set, first `samples`."""
    from pfl_edge.data.fetch import load

    if dataset == "mnist":
        images = load("mnist")["x_valid"]
    elif dataset == "animals":
        images = load("animals")["x"]
    else:
        path = Path(dataset)
        if not path.is_file():
            raise FileNotFoundError(
                f"public.dataset {dataset!r} is neither 'mnist', 'animals' nor an .npz file"
            )
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise ValueError(f"{path} has no array 'x' (found {npz.files})")
            images = npz["x"]
        dataset = path.stem
    if len(images) < samples:
        raise ValueError(f"public set {dataset!r} has {len(images)} samples, {samples} asked")
    return dataset, np.ascontiguousarray(images[:samples])


def build(dataset: str, samples: int) -> PublicSet:
    name, images = load_images(dataset, samples)
    return PublicSet(public_data.describe(name, images), images)

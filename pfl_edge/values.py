"""Scalar parameters and metrics: Python values to pfl_edge.v1.Value and back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pfl_edge.v1 import messages_pb2 as pb

Scalar = bool | int | float | str


def to_value(v: Scalar) -> pb.Value:
    if isinstance(v, bool):
        return pb.Value(flag=v)
    if isinstance(v, int):
        return pb.Value(integer=v)
    if isinstance(v, float):
        return pb.Value(number=v)
    if isinstance(v, str):
        return pb.Value(text=v)
    raise TypeError(f"parameter values must be bool, int, float or str, got {type(v).__name__}")


def from_value(v: pb.Value) -> Scalar:
    kind = v.WhichOneof("kind")
    if kind is None:
        raise ValueError("empty Value")
    out: Scalar = getattr(v, kind)
    return out


def to_values(params: Mapping[str, Scalar]) -> dict[str, pb.Value]:
    return {k: to_value(v) for k, v in params.items()}


def from_values(params: Mapping[str, Any]) -> dict[str, Scalar]:
    return {k: from_value(v) for k, v in params.items()}

"""Run parameters every learner understands, with their defaults.

An algorithm adds its own through its strategy's `params`; the coordinator resolves
them all from the run configuration and sends the result in RunConfig, so every agent
of a run trains with the same settings.
"""

from __future__ import annotations

from collections.abc import Mapping

from pfl_edge.codec import WIRE_FORMATS
from pfl_edge.values import Scalar

COMMON: dict[str, Scalar] = {
    "local_epochs": 2,
    "batch_size": 32,
    "lr": 1e-3,
    "optimizer": "adam",
    "distill_epochs": 1,
    "distill_batch_size": 128,
    "distill_lr": 1e-3,
    "distill_optimizer": "adam",
    # "run": each agent keeps one optimizer per kind for the run, shared by local training
    # and distillation; "call": a fresh one per training call (see edge_agent.training).
    "optimizer_state": "run",
    # After every training call (local, distillation, mutual), BatchNorm running statistics
    # are re-estimated on the agent's private training data (edge_agent.training).
    "recalibrate_bn": True,
    "temperature": 3.0,
    "t2_scaling": False,
    "wire": "float32",
    "seed": 0,
}

_OPTIMIZERS = ("adam", "sgd")
_CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": _OPTIMIZERS,
    "distill_optimizer": _OPTIMIZERS,
    "optimizer_state": ("run", "call"),
    "wire": WIRE_FORMATS,
}


def resolve(defaults: Mapping[str, Scalar], given: Mapping[str, object]) -> dict[str, Scalar]:
    """Defaults overridden by `given`; unknown keys and wrong types raise ValueError."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown algorithm parameter(s) {unknown}; known: {sorted(defaults)}")
    out = dict(defaults)
    for key, value in given.items():
        default = defaults[key]
        if isinstance(default, bool) != isinstance(value, bool):
            raise ValueError(f"parameter {key!r} must be {type(default).__name__}, got {value!r}")
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        if not isinstance(value, type(default)):
            raise ValueError(f"parameter {key!r} must be {type(default).__name__}, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ValueError(f"parameter {key!r} must be one of {_CHOICES[key]}, got {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"parameter {key!r} must not be negative, got {value!r}")
        out[key] = value
    return out

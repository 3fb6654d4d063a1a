"""An agent's training state, saved after every round so that a restarted agent goes on
from where it stopped instead of from fresh weights: the model, the kept optimizers and
the random generators, tagged with the run, agent, model and algorithm they belong to.

What is saved is the agent's choice (`SaveState`): Adam keeps two moments per parameter,
so "full" writes about three times the parameters each round; "model" leaves the
optimizers out (a restarted agent's optimizers start fresh), for boards whose flash
should see fewer writes; "off" saves and restores nothing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from edge_agent.training import Optimizers

log = logging.getLogger("pfl_edge.agent")

FORMAT = 1
FILE_NAME = "agent_state.pt"

SaveState = Literal["full", "model", "off"]


@dataclass(frozen=True)
class Identity:
    run_uid: str
    agent_id: str
    model: str
    algorithm: str


def save(
    path: Path,
    identity: Identity,
    round_: int,
    model: nn.Module,
    optimizers: Optimizers | None,
    rng: np.random.Generator,
) -> bool:
    """Write the state after `round_` atomically (a crash mid-write keeps the previous);
    `optimizers` None leaves them out.

    A failed write (disk full, --out not writable) is logged and returns False: the round
    is done and its reply sent, so the agent carries on; the file left is the previous
    round's, and a restart would resume from there.
    """
    state = {
        "format": FORMAT,
        **asdict(identity),
        "round": round_,
        "model_state": model.state_dict(),
        "optimizers": None if optimizers is None else optimizers.state_dict(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)  # torch reports a failed write as RuntimeError
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        log.warning(
            "could not save the agent state after round %d to %s: %s; carrying on (a restart "
            "would resume from the state saved before, if any)",
            round_,
            path,
            exc,
        )
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    return True


def restore(
    path: Path,
    identity: Identity,
    model: nn.Module,
    optimizers: Optimizers,
    rng: np.random.Generator,
) -> int | None:
    """Load the state at `path` into the model, optimizers and generators if it belongs to
    `identity`; return the round it was saved after. None, with everything untouched and the
    reason logged, when there is no file or it is unreadable, someone else's or unusable."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # any unreadable file means: start fresh
        log.warning("saved state %s is unreadable (%s); starting from fresh weights", path, exc)
        return None
    mine = asdict(identity)
    theirs = {k: state.get(k) for k in mine} if isinstance(state, dict) else {}
    if not isinstance(state, dict) or state.get("format") != FORMAT or theirs != mine:
        log.info(
            "saved state %s belongs to %s, not %s; starting from fresh weights", path, theirs, mine
        )
        return None
    try:
        _check(state, model, rng)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        log.warning("saved state %s cannot be used (%s); starting from fresh weights", path, exc)
        return None
    model.load_state_dict(state["model_state"])
    if state["optimizers"] is None:
        log.info("saved state %s holds no optimizer state; the optimizers start fresh", path)
    else:
        optimizers.load_state_dict(state["optimizers"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["round"])


def _check(state: dict[str, Any], model: nn.Module, rng: np.random.Generator) -> None:
    """Raise unless every part of `state` can be loaded, trying each on a throwaway so that
    nothing of the agent's changes when one part is bad."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state["model_state"].items()}
    if got != expected:
        raise ValueError("it does not fit the model")
    if state["optimizers"] is not None:
        Optimizers(model, keep=True).load_state_dict(state["optimizers"])
    type(rng.bit_generator)().state = json.loads(state["numpy_rng"])
    torch_rng = state["torch_rng"]
    current = torch.get_rng_state()
    if not isinstance(torch_rng, torch.Tensor) or torch_rng.shape != current.shape:
        raise TypeError("torch_rng is not a torch generator state")
    int(state["round"])

"""Real edge_agent.runtime.Agent objects run in threads of the test process against the
harness's coordinator, on 16 x 16 images (the smallest the model zoo takes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.config import RunConfig
from edge_agent.runtime import Agent, AgentOptions
from pfl_edge.data._npz import save_npz_atomic
from tests.harness import NUM_CLASSES, make_config

SHAPE = (1, 16, 16)
WAIT_S = 60.0


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def config(tmp: Path, **run: Any) -> RunConfig:
    """The harness's run config with a public set of 16 x 16 images."""
    cfg = make_config(tmp, **run)
    public = tmp / "public16.npz"
    np.savez(public, x=images(cfg.public.samples, 0))
    return replace(cfg, public=replace(cfg.public, dataset=str(public)))


def write_private(path: Path) -> Path:
    rng = np.random.default_rng(1)
    save_npz_atomic(
        path,
        {
            "x_train": images(32, 2),
            "y_train": rng.integers(0, NUM_CLASSES, 32).astype(np.int64),
            "x_test": images(8, 3),
            "y_test": rng.integers(0, NUM_CLASSES, 8).astype(np.int64),
        },
    )
    return path


def options(tmp: Path, target: str, agent_id: str, model: str = "lenet5") -> AgentOptions:
    """Agent `agent_id` on gRPC with private data, --out and cache under `tmp`."""
    return AgentOptions(
        agent_id=agent_id,
        coordinator=f"grpc://{target}",
        model=model,
        data=write_private(tmp / f"{agent_id}.npz"),
        out_dir=tmp / agent_id,
        cache_dir=tmp / "cache",
        num_classes=NUM_CLASSES,
    )


def start(agent: Agent, outcome: dict[str, Any]) -> threading.Thread:
    """Run the agent in a daemon thread; its final metrics or exception land in `outcome`."""

    def run() -> None:
        try:
            outcome["final"] = agent.run()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=f"agent-{agent.opts.agent_id}", daemon=True)
    thread.start()
    return thread


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(0.05)

"""In-process fleet driver for benchmarks: the services' Strategy and Learner classes,
no sockets.

It does what the coordinator engine and the agent runtime do around them: samples
agents per round (same rule and seeds as the engine), derives the round's public
selection, passes every instruction through pfl_edge.codec with its wire format into a
TaskView, encodes every reply as the agent would (the run's `wire` parameter), decodes
it with `require_finite`, asks the strategy to validate it and closes each phase. Bytes
are those of the gRPC frames the services would exchange: the Envelope(Task / Result)
and its blobs framed by pfl_edge.framing, plus the 5-byte gRPC message prefix per frame.
Agents are seeded as edge_agent.runtime seeds them, so model initialisations match.

Accuracy: every learner reports `test_acc` (after the round's last step) and the
soft-prediction learners also `test_acc_before_distill`. With `curve_test_samples`
set, rounds before the last evaluate on only that many test samples per agent (a
cheaper learning curve); the last round always evaluates on all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from coordinator import strategies
from coordinator.strategies.base import AgentInfo, Instruction, Reply, RunContext, Strategy
from edge_agent import learners, training
from edge_agent.learners.base import Learner, LearnerContext, Span, TaskView
from edge_agent.models import build_model, parameter_count
from pfl_edge import codec, public_data
from pfl_edge.constants import GRPC_MESSAGE_PREFIX_BYTES
from pfl_edge.data.partition import ClientData
from pfl_edge.errors import Rejection
from pfl_edge.framing import Framer, Message
from pfl_edge.params import COMMON, resolve
from pfl_edge.v1 import messages_pb2 as pb
from pfl_edge.values import from_values, to_values

FLOAT32_BYTES = 4
RUN_ID = "bench"


@dataclass(frozen=True)
class AgentSetup:
    agent_id: str
    architecture: str
    data: ClientData


@dataclass
class AgentOutcome:
    agent_id: str
    architecture: str
    parameter_count: int
    test_acc: float
    """After the last round (after its distillation where there is one)."""
    test_acc_before_distill: float
    """Last round, before its distillation (equals test_acc for methods without one)."""
    bytes_up: int = 0
    bytes_down: int = 0
    rounds: int = 0
    """Rounds this agent took part in."""


@dataclass
class FleetResult:
    algorithm: str
    params: dict[str, Any]
    agents: list[AgentOutcome]
    curve: list[dict[str, float]]
    """Per round: mean test_acc (and before-distill) over the round's participants."""
    strategy: Strategy
    rejected: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def mean_acc(self, before_distill: bool = False) -> float:
        key = "test_acc_before_distill" if before_distill else "test_acc"
        return float(np.mean([getattr(a, key) for a in self.agents]))

    def per_architecture(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for arch in sorted({a.architecture for a in self.agents}):
            group = [a for a in self.agents if a.architecture == arch]
            out[arch] = {
                "test_acc": float(np.mean([a.test_acc for a in group])),
                "test_acc_before_distill": float(
                    np.mean([a.test_acc_before_distill for a in group])
                ),
            }
        return out

    def bytes_per_agent_round(self, direction: str) -> float:
        total = sum(a.bytes_up if direction == "up" else a.bytes_down for a in self.agents)
        return total / max(1, sum(a.rounds for a in self.agents))

    def param_bytes_per_agent(self) -> float:
        """Mean float32 parameter bytes: what FedAvg would move per agent and direction."""
        return float(np.mean([a.parameter_count * FLOAT32_BYTES for a in self.agents]))


def agent_seed(seed: int, agent_id: str) -> int:
    """The per-agent seed edge_agent.runtime derives from the run seed and the agent id."""
    digest = hashlib.sha256(f"{seed}:{agent_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def round_seed(seed: int, rnd: int) -> int:
    """The coordinator engine's seed of a round's public selection."""
    return int(np.random.default_rng([seed, rnd, 0x5EED]).integers(2**62))


def sample(seed: int, rnd: int, agent_ids: Sequence[str], fraction: float) -> list[str]:
    """The engine's sampling rule: ceil(fraction * n) agents drawn by rng(seed, round)."""
    rng = np.random.default_rng([seed, rnd])
    k = max(1, math.ceil(fraction * len(agent_ids)))
    return sorted(str(a) for a in rng.choice(sorted(agent_ids), size=k, replace=False))


class _Wire:
    """Frames as the transports send them; counts their bytes."""

    def __init__(self) -> None:
        self.framer = Framer()
        self.seq = 0

    def bytes(self, agent_id: str, rnd: int, blobs: codec.Blobs, **body: Any) -> int:
        self.seq += 1
        env = pb.Envelope(agent_id=agent_id, run_id=RUN_ID, round=rnd, seq=self.seq, **body)
        frames = self.framer.frames(Message(env, blobs))
        return sum(len(raw) + GRPC_MESSAGE_PREFIX_BYTES for raw in frames)


def run_fleet(
    algorithm: str,
    agents: Sequence[AgentSetup],
    public: np.ndarray,
    *,
    num_classes: int,
    rounds: int,
    public_per_round: int,
    seed: int,
    params: Mapping[str, object] | None = None,
    sample_fraction: float = 1.0,
    curve_test_samples: int = 0,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
    strategy_cls: type[Strategy] | None = None,
) -> FleetResult:
    """Run `rounds` rounds of `algorithm` over `agents` and return what was measured.

    `params` overrides pfl_edge.params.COMMON and the strategy's own parameters; `seed`
    sets the run seed (sampling, public selections, agent seeds). `strategy_cls` replaces
    the coordinator half of `algorithm` (an experiment's own), its agent half stays.
    """
    torch.set_num_threads(threads)
    started = time.perf_counter()
    strategy_cls = strategy_cls or strategies.get(algorithm)
    learner_cls = learners.get(algorithm)
    run_params = resolve({**COMMON, **strategy_cls.params}, {**(params or {}), "seed": seed})
    strategy = strategy_cls(RunContext(run_params, num_classes, public_per_round, seed))
    wire_format = next(w for w in codec.WIRE_FORMATS if w == run_params["wire"])

    fleet: dict[str, Learner] = {}
    infos: dict[str, AgentInfo] = {}
    outcomes: dict[str, AgentOutcome] = {}
    for setup in agents:
        a_seed = agent_seed(seed, setup.agent_id)
        training.seed_everything(a_seed)
        x = setup.data.x_train
        model = build_model(setup.architecture, (x.shape[1], x.shape[2], x.shape[3]), num_classes)
        fleet[setup.agent_id] = learner_cls(
            LearnerContext(
                agent_id=setup.agent_id,
                model=model,
                data=_curve_data(setup.data, curve_test_samples),
                public=public,
                params=run_params,
                num_classes=num_classes,
                rng=np.random.default_rng(a_seed),
            )
        )
        count = parameter_count(model)
        infos[setup.agent_id] = AgentInfo(
            setup.agent_id, setup.architecture, count, len(setup.data.y_train), num_classes
        )
        outcomes[setup.agent_id] = AgentOutcome(
            setup.agent_id, setup.architecture, count, float("nan"), float("nan")
        )

    wire = _Wire()
    curve: list[dict[str, float]] = []
    rejected: list[str] = []
    for rnd in range(1, rounds + 1):
        round_start = time.perf_counter()
        if rnd == rounds:
            for setup in agents:
                learner = fleet[setup.agent_id]
                learner.ctx = dataclasses.replace(learner.ctx, data=setup.data)
        chosen = sample(seed, rnd, list(infos), sample_fraction)
        selection = public_data.selection(len(public), round_seed(seed, rnd), public_per_round)
        metrics: dict[str, dict[str, float]] = {a: {} for a in chosen}
        instructions: Mapping[str, Instruction] | None = strategy.begin_round(
            rnd, [infos[a] for a in chosen]
        )
        phase = 0
        while instructions:
            replies: dict[str, Reply] = {}
            for agent_id, ins in instructions.items():
                down: codec.Blobs = []
                task = pb.Task(
                    phase=phase,
                    action=ins.action,
                    public=selection,
                    params=to_values(ins.params),
                    tensors=codec.encode_many(ins.tensors, ins.wire, down),
                )
                outcomes[agent_id].bytes_down += wire.bytes(agent_id, rnd, down, task=task)
                learner = fleet[agent_id]
                out = learner.handle(
                    TaskView(
                        round=rnd,
                        phase=phase,
                        action=task.action,
                        tensors=codec.decode_many(task.tensors, down, require_finite=True),
                        params=from_values(task.params),
                        public_indices=public_data.resolve(task.public, len(public)),
                    )
                )
                up: codec.Blobs = []
                result = pb.Result(
                    phase=phase,
                    action=task.action,
                    tensors=codec.encode_many(out.tensors, wire_format, up),
                    metrics=out.metrics,
                    busy=_cover(learner.take_spans()),
                )
                outcomes[agent_id].bytes_up += wire.bytes(agent_id, rnd, up, result=result)
                reply = Reply(
                    result.action,
                    codec.decode_many(result.tensors, up, require_finite=True),
                    dict(result.metrics),
                )
                try:
                    strategy.validate(rnd, phase, infos[agent_id], reply)
                except Rejection as r:
                    rejected.append(f"round {rnd} phase {phase} {agent_id}: {r}")
                    continue
                replies[agent_id] = reply
                metrics[agent_id].update(reply.metrics)
            instructions = strategy.end_phase(rnd, phase, replies)
            phase += 1
        for agent_id in chosen:
            m, o = metrics[agent_id], outcomes[agent_id]
            o.rounds += 1
            if "test_acc" in m:
                o.test_acc = m["test_acc"]
                o.test_acc_before_distill = m.get("test_acc_before_distill", m["test_acc"])
        point = _round_point(rnd, metrics)
        curve.append(point)
        if progress is not None:
            progress(
                f"{algorithm} round {rnd}/{rounds}: acc {point['test_acc']:.4f} "
                f"(before distill {point['test_acc_before_distill']:.4f}), "
                f"{time.perf_counter() - round_start:.1f} s"
            )
    return FleetResult(
        algorithm=algorithm,
        params=dict(run_params),
        agents=[outcomes[s.agent_id] for s in agents],
        curve=curve,
        strategy=strategy,
        rejected=rejected,
        wall_s=time.perf_counter() - started,
    )


def _cover(spans: Sequence[Span]) -> list[pb.Interval]:
    """The busy interval edge_agent.runtime reports: first span's start to last span's end."""
    if not spans:
        return []
    start = min(s.start_unix for s in spans)
    return [pb.Interval(start_unix=start, end_unix=max(s.end_unix for s in spans))]


def _curve_data(data: ClientData, samples: int) -> ClientData:
    if samples <= 0 or samples >= len(data.y_test):
        return data
    return ClientData(data.x_train, data.y_train, data.x_test[:samples], data.y_test[:samples])


def _round_point(rnd: int, metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    after = [m["test_acc"] for m in metrics.values() if "test_acc" in m]
    before = [
        m.get("test_acc_before_distill", m["test_acc"]) for m in metrics.values() if "test_acc" in m
    ]
    return {
        "round": float(rnd),
        "test_acc": float(np.mean(after)) if after else float("nan"),
        "test_acc_before_distill": float(np.mean(before)) if before else float("nan"),
    }

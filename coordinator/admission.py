"""Who may join a run, and how fast: the checks a Register passes before the engine takes
it. The transport proved an identity (mutual TLS) or nothing (plaintext); the fleet
registry says who belongs (`pfl-edge certs` writes it, this re-reads it when it changes);
a token bucket bounds registrations per second; the device profile is bounded field by
field, so that a stranger can neither impersonate an agent nor fill the store."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from pfl_edge import errors, fleet
from pfl_edge.errors import Rejection
from pfl_edge.transport.base import Identity
from pfl_edge.v1 import messages_pb2 as pb

log = logging.getLogger("pfl_edge.coordinator")

BURST_SECONDS = 10.0
"""The registration bucket holds this many seconds' worth (a fleet starting at once)."""

TEXT_LIMITS = {
    "device.hostname": 253,
    "device.cpu_arch": 64,
    "device.accelerator": 64,
    "model.architecture": 64,
    "public_data_sha256": 64,
}
COUNT_LIMITS = {
    "device.cpu_cores": 1 << 16,
    "device.memory_bytes": 1 << 50,
    "model.parameter_count": 1 << 40,
    "num_train_samples": 1 << 40,
    "num_test_samples": 1 << 40,
}


class TokenBucket:
    """`rate` events per second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens, self._at = burst, clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


AGENT_RATE = 0.5
AGENT_BURST = 5.0
"""One agent id's registrations: a reconnecting agent needs one now and then; a member
re-registering in a loop must not use up the run-wide rate of everyone else."""
AGENT_BUCKETS = 10_000
"""Ids whose bucket is kept, the least recently seen forgotten first."""


class Admission:
    def __init__(
        self,
        fleet_path: Path | None,
        register_rate: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`fleet_path` None admits any agent the transport let through."""
        self._path = fleet_path
        self._stamp: tuple[int, int, int] | None = None
        self.registry: fleet.Registry | None = None
        self._bucket = TokenBucket(register_rate, max(1.0, register_rate * BURST_SECONDS), clock)
        self._rate = register_rate
        self._clock = clock
        self._agents: OrderedDict[str, TokenBucket] = OrderedDict()
        if fleet_path is not None and not self.reload():
            raise ValueError(f"fleet registry {fleet_path} not found")

    def check(self, agent_id: str, reg: pb.Register, identity: Identity | None) -> None:
        """Rejection unless this Register may be taken now."""
        if identity is not None and identity.agent_id != agent_id:
            raise Rejection(
                pb.ERROR_CODE_PERMISSION_DENIED,
                f"certificate of agent {identity.agent_id!r} may not register as {agent_id!r}",
            )
        reason = self.refusal(agent_id, identity.cert_sha256 if identity else None)
        if reason is not None:
            raise Rejection(pb.ERROR_CODE_PERMISSION_DENIED, reason)
        check_profile(reg)
        if not self._agent_bucket(agent_id).take():
            raise errors.too_large(
                f"agent {agent_id!r} registers too often (more than {AGENT_RATE:g} per second "
                "on average): retry in a few seconds"
            )
        if not self._bucket.take():
            raise errors.too_large(
                f"too many registrations (more than {self._rate:g} per second): retry in a "
                "few seconds"
            )

    def _agent_bucket(self, agent_id: str) -> TokenBucket:
        bucket = self._agents.pop(agent_id, None) or TokenBucket(
            AGENT_RATE, AGENT_BURST, self._clock
        )
        self._agents[agent_id] = bucket
        if len(self._agents) > AGENT_BUCKETS:
            self._agents.popitem(last=False)
        return bucket

    def refusal(self, agent_id: str, cert_sha256: str | None) -> str | None:
        """Why the registry does not admit this agent now (None: it does, or no registry)."""
        return None if self.registry is None else self.registry.admits(agent_id, cert_sha256)

    def reload(self) -> bool:
        """Re-read the registry if its file changed; True when it was (re)loaded. A file
        that does not parse is logged and the registry before it kept."""
        if self._path is None:
            return False
        try:
            st = self._path.stat()
        except OSError:
            return False
        # pfl_edge.fleet.save replaces the file: a new inode even within one mtime tick.
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.registry = fleet.load(self._path)
        except ValueError as exc:
            if self.registry is None:
                raise
            log.error("fleet registry %s not reloaded, the previous one stays: %s", self._path, exc)
            return False
        log.info("fleet registry %s: %d members", self._path, len(self.registry.members))
        return True


def check_profile(reg: pb.Register) -> None:
    """INVALID_ARGUMENT naming the first field of a Register beyond its bound."""
    for name, limit in TEXT_LIMITS.items():
        text = _field(reg, name)
        assert isinstance(text, str)
        if len(text) > limit:
            raise errors.invalid(f"register.{name} has {len(text)} characters; at most {limit}")
    for name, limit in COUNT_LIMITS.items():
        value = _field(reg, name)
        assert isinstance(value, int)
        if value > limit:
            raise errors.invalid(f"register.{name} = {value} is above the bound of {limit}")
    if len(reg.model.input_shape) > 4:
        raise errors.invalid(
            f"register.model.input_shape has {len(reg.model.input_shape)} dimensions; at most 4"
        )


def _field(reg: pb.Register, dotted: str) -> object:
    value: object = reg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value

"""The in-process fleet: real edge agents (edge_agent.runtime.Agent, learners and all) in
the coordinator's process, joined to its engine by links instead of sockets.

Nothing about a round is simulated here: the engine runs the round core as it does in
the service, the agents run the runtime they run on a device, and every message between
them is framed (pfl_edge.framing, the run's chunk size) and reassembled as gRPC carries
it, so both meters count exactly what the gRPC transports count (frames plus gRPC's
5-byte prefix) and every tensor makes the codec round trip in the run's wire format.
What differs from a deployment: the agents take turns on one worker thread (each with
its own torch random state, swapped in around its turn, so that interleaving them gives
each the numbers it would compute alone), their links cannot fail, and they start with
the public set at hand (no download in round 0).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import torch

from edge_agent.runtime import Agent
from pfl_edge.accounting import ByteMeter, Direction
from pfl_edge.errors import Rejection
from pfl_edge.framing import Framer, Message, Reassembler
from pfl_edge.transport import grpc_common as gc
from pfl_edge.transport.base import (
    ClientTransport,
    Inbound,
    ServerTransport,
    TransportClosed,
    record,
    record_sent,
)

log = logging.getLogger("pfl_edge.sim")

NAME = "inprocess"


class Wire:
    """Frames a message as the gRPC transports send it and reads it back on the far side;
    counts it in both meters as they would."""

    def __init__(self, chunk_bytes: int, max_message_bytes: int) -> None:
        self._framer = Framer(chunk_bytes)
        self._max = max_message_bytes

    def carry(self, msg: Message, sender: ByteMeter, receiver: ByteMeter, up: bool) -> Message:
        raws = list(self._framer.frames(msg))
        direction: Direction = "up" if up else "down"
        record_sent(sender, direction, msg.envelope, sum(map(gc.wire_bytes, raws)), len(raws))
        reader = Reassembler(max_message_bytes=self._max)
        received = None
        for raw in raws:
            received = reader.feed(raw, gc.wire_bytes(raw))
        assert received is not None, "a message's last frame completes it"
        record(receiver, direction, received)
        reader.close()
        return received.message


class _Link(ClientTransport):
    """One agent's end: what it sends goes to the engine; the engine's answers and tasks
    come back through the fleet's worker queue."""

    name = NAME

    def __init__(self, fleet: InProcessFleet, agent: Agent) -> None:
        self.fleet, self.agent = fleet, agent
        self.peer: str | None = None
        """The agent id once the engine accepted its registration."""
        self.torch_rng = torch.get_rng_state()
        """Taken right after the agent was made (it seeds torch and builds its model)."""
        self.done = False

    def connect(self, timeout_s: float) -> None:
        return None

    def send(self, msg: Message) -> None:
        self.fleet.upload(self, msg)

    def recv(self, timeout_s: float | None) -> Message | None:
        raise TransportClosed("an in-process agent is driven by its fleet, not by recv")

    def close(self) -> None:
        return None


class InProcessFleet(ServerTransport):
    """The engine's transport to the in-process agents, and the thread that runs them."""

    name = NAME
    supports_peer_exchange = False

    def __init__(self, meter: ByteMeter, chunk_bytes: int, max_message_bytes: int) -> None:
        self._meter = meter
        self._wire = Wire(chunk_bytes, max_message_bytes)
        self._inbound: Inbound | None = None
        self._links: dict[str, _Link] = {}
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        """What the worker thread runs, in order: making agents, their turns. All torch
        work happens there, so one thread owns torch's global random state."""
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []
        """Refusals and failures, for the run's summary (a healthy run has none)."""
        self.finished = threading.Event()
        """Set when every agent's run has ended."""
        self._agents: list[_Link] = []
        self._pending = 0
        """Agents asked for and not made yet."""
        self._lock = threading.Lock()

    # ServerTransport (the engine's side).

    def start(self, inbound: Inbound) -> None:
        self._inbound = inbound
        self._thread = threading.Thread(target=self._serve, name="inprocess-fleet", daemon=True)
        self._thread.start()

    def add(self, make: Callable[[], Agent]) -> None:
        """Have the worker make an agent, which then registers as it would on connecting."""
        with self._lock:
            self._pending += 1
        self._work.put(functools.partial(self._make, make))

    def _make(self, make: Callable[[], Agent]) -> None:
        agent = make()
        link = _Link(self, agent)
        agent.transport = link
        self._agents.append(link)
        with self._lock:
            self._pending -= 1
        self._turn(link, None)

    def send(self, agent_id: str, msg: Message) -> bool:
        link = self._links.get(agent_id)
        if link is None or link.done:
            return False
        carried = self._wire.carry(msg, self._meter, link.agent.meter, up=False)
        self._work.put(functools.partial(self._turn, link, carried))
        return True

    def disconnect(self, agent_id: str, code: int, reason: str) -> None:
        link = self._links.pop(agent_id, None)
        if link is not None:
            self.errors.append(f"{agent_id}: disconnected by the coordinator: {reason}")
            self._end(link)

    def stop(self, grace_s: float = 1.0) -> None:
        self._work.put(None)
        if self._thread is not None:
            self._thread.join(grace_s + 5)

    @property
    def address(self) -> str:
        return "inprocess://"

    # The agents' side.

    def upload(self, link: _Link, msg: Message) -> None:
        """An agent sends `msg`: carried to the engine, its replies queued back to it."""
        assert self._inbound is not None
        carried = self._wire.carry(msg, link.agent.meter, self._meter, up=True)
        fut = self._inbound.on_message(link.peer, carried)
        registering = carried.envelope.agent_id if carried.envelope.HasField("register") else None
        fut.add_done_callback(functools.partial(self._answered, link=link, registering=registering))

    def _answered(self, fut: Future[list[Message]], link: _Link, registering: str | None) -> None:
        """On the engine thread, as it decides: bind a registration, queue the replies
        before anything it sends the agent afterwards (as the gRPC transport does)."""
        exc = fut.exception()
        if exc is not None:
            reason = str(exc) if isinstance(exc, Rejection) else repr(exc)
            self.errors.append(f"{link.agent.opts.agent_id}: refused: {reason}")
            log.error("agent %s refused: %s", link.agent.opts.agent_id, reason)
            if registering is not None:
                self._end(link)
            return
        if registering is not None:
            link.peer = registering
            self._links[registering] = link
        for reply in fut.result():
            self.send(registering or link.peer or "", reply)

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            work()

    def _turn(self, link: _Link, msg: Message | None) -> None:
        """The agent acts on `msg` (None: it registers) with its own torch random state."""
        if link.done:
            return
        try:
            with _torch_rng(link):
                ended = link.agent.register() if msg is None else link.agent.handle(msg)
        except Exception as exc:
            log.exception("agent %s failed", link.agent.opts.agent_id)
            self.errors.append(f"{link.agent.opts.agent_id}: failed: {exc!r}")
            ended = True
        if ended:
            self._end(link)

    def _end(self, link: _Link) -> None:
        if link.done:
            return
        link.done = True
        if link.peer is not None and self._inbound is not None:
            self._inbound.on_disconnect(link.peer, "its run ended")
        with self._lock:
            pending = self._pending
        if pending == 0 and all(a.done for a in self._agents):
            self.finished.set()


@contextlib.contextmanager
def _torch_rng(link: _Link) -> Iterator[None]:
    """Swap an agent's torch random state in for its turn and keep what its turn left."""
    torch.set_rng_state(link.torch_rng)
    try:
        yield
    finally:
        link.torch_rng = torch.get_rng_state()

"""A counting TCP proxy: forwards connections to a target and counts the bytes that
cross the socket in each direction. It measures what byte accounting claims."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

BUFFER_BYTES = 1 << 16


@dataclass
class SocketCounts:
    up: int = 0
    """client -> target"""
    down: int = 0
    """target -> client"""
    connections: int = 0


class CountingProxy:
    """Listen on `listen_host:port` (0 picks a free port), forward to `target`."""

    def __init__(
        self, target: tuple[str, int], listen_host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._counts = SocketCounts()
        self._server = socket.create_server((listen_host, port))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._blackhole = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="proxy-accept")

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def counts(self) -> SocketCounts:
        with self._lock:
            return SocketCounts(self._counts.up, self._counts.down, self._counts.connections)

    def reset(self) -> None:
        with self._lock:
            self._counts = SocketCounts(connections=self._counts.connections)

    def blackhole(self) -> None:
        """From now on drop every byte, both ways, and keep the connections open: a
        network path that died without a FIN or RST (a cut cable, a NAT that forgot it)."""
        self._blackhole.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._server.close()
        with self._lock:
            for s in self._sockets:
                _close(s)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError as exc:
                log.warning("proxy: cannot reach %s:%d: %s", *self.target, exc)
                _close(client)
                continue
            upstream.settimeout(None)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._counts.connections += 1
                self._sockets += [client, upstream]
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, up), daemon=True, name="proxy-pump"
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(BUFFER_BYTES):
                if self._blackhole.is_set():
                    continue
                dst.sendall(data)
                with self._lock:
                    if up:
                        self._counts.up += len(data)
                    else:
                        self._counts.down += len(data)
        except OSError:
            pass
        finally:
            _close(dst)
            _close(src)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for configs that need a number up front)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port

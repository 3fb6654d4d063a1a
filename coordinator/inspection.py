"""What a running coordinator shows about itself: snapshots, inspection files, HTTP.

After every completed round (and whenever the agent count changes) the engine thread
publishes an immutable `Snapshot`: the run's progress plus the strategy's `inspect()`
matrices (KT-pFL's knowledge coefficients c). Two observers take it:

- `InspectionWriter` writes each round's matrices to `<out>/inspect/<name>_round_<NNN>.csv`
  (a header row of column labels, then one row per label) and redraws
  `<out>/<name>_heatmap.png` for the latest round, on a thread of its own so the engine
  never waits for matplotlib;
- `Board` keeps the latest snapshot for `InspectServer`, a read-only HTTP endpoint
  (stdlib http.server on a daemon thread) that reads nothing but snapshots:

  GET /status              run id, algorithm, last completed round, agents (JSON)
  GET /inspect             names of the matrices and the round they belong to
  GET /inspect/<name>      one matrix with its row and column labels (JSON)
  GET /inspect/<name>.png  its heatmap

Routes are a table of path -> function(snapshot) -> response, so another view (a
Prometheus /metrics) is one more entry.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import queue
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from coordinator.strategies.base import Inspection

log = logging.getLogger("pfl_edge.coordinator")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""Inspection names: they become file names and URL path segments."""

INSPECT_DIR = "inspect"


@dataclass(frozen=True)
class Snapshot:
    """The coordinator's state as the HTTP endpoint and the inspection files see it.

    Built on the engine thread and never changed afterwards: `inspections` is a read-only
    mapping of immutable `Inspection`s, so any thread may read it without a lock.
    """

    run_id: str
    algorithm: str
    round: int
    """Last completed round (0 before the first)."""
    rounds: int
    """Rounds of the run."""
    agents: int
    """Agents registered (ever, this run)."""
    connected: int
    finished: bool
    inspections: Mapping[str, Inspection]
    inspections_round: int
    """The round after which `inspections` were taken."""
    time: float

    def status(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "algorithm": self.algorithm,
            "round": self.round,
            "rounds": self.rounds,
            "agents": self.agents,
            "connected": self.connected,
            "finished": self.finished,
            "inspections": sorted(self.inspections),
            "time": self.time,
        }


class Board:
    """The latest snapshot: the engine thread publishes, any thread reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: Snapshot | None = None

    def publish(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._latest = snapshot

    def latest(self) -> Snapshot | None:
        with self._lock:
            return self._latest


# Files.


def csv_path(out_dir: Path, name: str, round_: int) -> Path:
    return out_dir / INSPECT_DIR / f"{name}_round_{round_:03d}.csv"


def heatmap_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}_heatmap.png"


def to_csv(ins: Inspection) -> str:
    """A header row ("", column labels...), then each row label with its values."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["", *ins.columns])
    for label, row in zip(ins.rows, ins.matrix, strict=True):
        w.writerow([label, *(repr(float(v)) for v in row)])
    return buf.getvalue()


def read_csv(path: Path) -> Inspection:
    """An inspection file back as an Inspection (labels and matrix)."""
    with path.open(newline="") as f:
        header, *body = list(csv.reader(f))
    rows = [r[0] for r in body]
    matrix = np.array([[float(v) for v in r[1:]] for r in body], dtype=np.float64)
    return Inspection(matrix.reshape(len(rows), len(header) - 1), rows, header[1:])


def heatmap_png(name: str, ins: Inspection, round_: int) -> bytes:
    """The inspection drawn by coordinator.heatmap, as PNG bytes."""
    from coordinator.heatmap import save_heatmap

    with tempfile.TemporaryDirectory(prefix="pfl-heatmap-") as tmp:
        path = save_heatmap(
            ins.matrix,
            ins.rows,
            Path(tmp) / f"{name}.png",
            columns=ins.columns,
            xlabel=ins.column_title,
            ylabel=ins.row_title,
            value_label=name,
            title=f"{name} after round {round_} ({len(ins.rows)} x {len(ins.columns)})",
        )
        return path.read_bytes()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def usable(name: str) -> bool:
    if NAME_PATTERN.match(name):
        return True
    log.warning("inspection %r skipped: names must match %s", name, NAME_PATTERN.pattern)
    return False


class InspectionWriter:
    """Writes each new round's inspections under `out_dir` on a thread of its own.

    Call it with snapshots (an engine observer); `close` writes what is queued and stops.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._queue: queue.Queue[Snapshot | None] = queue.Queue()
        self._last_round = -1
        self._thread = threading.Thread(target=self._loop, name="inspect-writer", daemon=True)
        self._thread.start()

    def __call__(self, snapshot: Snapshot) -> None:
        """Queue the snapshot when it holds inspections of a round not written yet."""
        if snapshot.inspections and snapshot.inspections_round > self._last_round:
            self._last_round = snapshot.inspections_round
            self._queue.put(snapshot)

    def write(self, snapshot: Snapshot) -> list[Path]:
        """Write the snapshot's inspections now; the paths written."""
        written: list[Path] = []
        rnd = snapshot.inspections_round
        for name, ins in sorted(snapshot.inspections.items()):
            if not usable(name):
                continue
            path = csv_path(self.out_dir, name, rnd)
            _write_atomic(path, to_csv(ins).encode())
            written.append(path)
            if ins.matrix.size:
                png = heatmap_path(self.out_dir, name)
                _write_atomic(png, heatmap_png(name, ins, rnd))
                written.append(png)
        return written

    def close(self, timeout: float = 60.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while (snapshot := self._queue.get()) is not None:
            try:
                paths = self.write(snapshot)
            except Exception:
                log.exception("writing the inspections of round %d", snapshot.inspections_round)
            else:
                log.debug("round %d inspections: %s", snapshot.inspections_round, paths)


# HTTP.

Response = tuple[int, str, bytes]
"""HTTP status, content type, body."""

JSON_TYPE = "application/json"


def json_response(obj: object, status: int = 200) -> Response:
    return status, JSON_TYPE, (json.dumps(obj, allow_nan=False) + "\n").encode()


def not_found(what: str) -> Response:
    return json_response({"error": f"{what} not found"}, 404)


def matrix_json(name: str, ins: Inspection, round_: int) -> dict[str, Any]:
    values = [[float(v) if np.isfinite(v) else None for v in row] for row in ins.matrix]
    return {
        "name": name,
        "round": round_,
        "description": ins.description,
        "rows": list(ins.rows),
        "columns": list(ins.columns),
        "matrix": values,
    }


class InspectServer:
    """Read-only HTTP view of the latest snapshot on `board` (see the module doc)."""

    def __init__(self, host: str, port: int, board: Board) -> None:
        self.board = board
        self.routes: dict[str, Callable[[Snapshot], Response]] = {
            "/": self._index,
            "/status": lambda s: json_response(s.status()),
            "/inspect": self._names,
        }
        """Exact paths; /inspect/<name> and /inspect/<name>.png are matched in `handle`."""
        self._png_cache: dict[tuple[str, int], bytes] = {}
        self._png_lock = threading.Lock()
        self._httpd = _server(host, port, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="inspect-http", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        host = str(host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> InspectServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()

    def handle(self, path: str) -> Response:
        """The response to GET `path` (no socket involved)."""
        snapshot = self.board.latest()
        if snapshot is None:
            return json_response({"error": "the coordinator is starting"}, 503)
        path = "/" + path.strip("/")
        route = self.routes.get(path)
        if route is not None:
            return route(snapshot)
        prefix = "/inspect/"
        if not path.startswith(prefix):
            return not_found(path)
        name = path[len(prefix) :]
        png = name.endswith(".png")
        name = name.removesuffix(".png")
        ins = snapshot.inspections.get(name)
        if ins is None:
            return not_found(f"inspection {name!r}")
        if png:
            return 200, "image/png", self._png(name, ins, snapshot.inspections_round)
        return json_response(matrix_json(name, ins, snapshot.inspections_round))

    def _index(self, snapshot: Snapshot) -> Response:
        names = sorted(snapshot.inspections)
        return json_response(
            {
                "endpoints": [
                    "/status",
                    "/inspect",
                    *(f"/inspect/{n}" for n in names),
                    *(f"/inspect/{n}.png" for n in names),
                ]
            }
        )

    def _names(self, snapshot: Snapshot) -> Response:
        return json_response(
            {"round": snapshot.inspections_round, "names": sorted(snapshot.inspections)}
        )

    def _png(self, name: str, ins: Inspection, round_: int) -> bytes:
        key = (name, round_)
        with self._png_lock:
            cached = self._png_cache.get(key)
            if cached is None:
                cached = heatmap_png(name, ins, round_)
                self._png_cache = {k: v for k, v in self._png_cache.items() if k[0] != name}
                self._png_cache[key] = cached
            return cached


def _server(host: str, port: int, app: InspectServer) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pfl-coordinator"

        def do_GET(self) -> None:
            try:
                status, ctype, body = app.handle(urlsplit(self.path).path)
            except Exception as exc:
                log.exception("inspection endpoint: GET %s", self.path)
                status, ctype, body = json_response({"error": f"internal error: {exc}"}, 500)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("inspection endpoint %s: " + format, self.address_string(), *args)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return Server((host, port), Handler)

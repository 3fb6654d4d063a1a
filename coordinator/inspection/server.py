"""Read-only HTTP view of the latest snapshot (stdlib http.server on a daemon thread)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from coordinator.inspection.files import heatmap_png
from coordinator.inspection.snapshot import Board, Snapshot
from coordinator.strategies.base import Inspection

log = logging.getLogger("pfl_edge.coordinator")

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

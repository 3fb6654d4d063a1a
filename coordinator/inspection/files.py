"""Inspection files: each round's matrices as CSV under `<out>/inspect/`, the latest as
`<out>/<name>_heatmap.png`, written on a thread of their own.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import queue
import tempfile
import threading
from pathlib import Path

import numpy as np

from coordinator.inspection.snapshot import Snapshot, usable
from coordinator.strategies.base import Inspection

log = logging.getLogger("pfl_edge.coordinator")

INSPECT_DIR = "inspect"


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

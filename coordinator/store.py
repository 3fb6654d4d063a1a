"""Run state in SQLite plus tensor files, so that a restarted coordinator resumes at
the last completed round. A round's strategy state is written to its own file first
and referenced by the round's row second, in one transaction: a crash in between
leaves the previous round as the last completed one."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY, info TEXT NOT NULL, transport TEXT NOT NULL,
    registered_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, completed_at REAL NOT NULL, metrics TEXT NOT NULL,
    state_file TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agent_rounds (
    round INTEGER NOT NULL, agent_id TEXT NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (round, agent_id));
CREATE TABLE IF NOT EXISTS bytes (
    round INTEGER NOT NULL, agent_id TEXT NOT NULL, direction TEXT NOT NULL,
    kind TEXT NOT NULL, bytes INTEGER NOT NULL, messages INTEGER NOT NULL,
    frames INTEGER NOT NULL, PRIMARY KEY (round, agent_id, direction, kind));
CREATE TABLE IF NOT EXISTS finals (agent_id TEXT PRIMARY KEY, metrics TEXT NOT NULL);
"""


@dataclass(frozen=True)
class RoundRow:
    round: int
    metrics: dict[str, Any]
    state_file: str


class Store:
    """One run's persistent state. Thread-safe; every call is one transaction."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        (state_dir / "strategy").mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(state_dir / "run.sqlite", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def run_uid(self) -> str:
        """This run's unique id: made on first use, the same after every restart."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('run_uid', ?)", (uuid.uuid4().hex,)
            )
            row = self._db.execute("SELECT value FROM meta WHERE key = 'run_uid'").fetchone()
        return str(row[0])

    def save_agents(self, agents: Mapping[str, tuple[Mapping[str, Any], str]]) -> None:
        """Registrations (agent id -> (info, transport)) in one transaction."""
        now = time.time()
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO agents VALUES (?, ?, ?, ?) ON CONFLICT(agent_id) DO UPDATE SET "
                "info = excluded.info, transport = excluded.transport",
                [(a, json.dumps(dict(info)), t, now) for a, (info, t) in agents.items()],
            )

    def agents(self) -> dict[str, tuple[dict[str, Any], str]]:
        with self._lock:
            rows = self._db.execute("SELECT agent_id, info, transport FROM agents").fetchall()
        return {r[0]: (json.loads(r[1]), r[2]) for r in rows}

    def complete_round(
        self,
        round_: int,
        metrics: Mapping[str, Any],
        state: Mapping[str, np.ndarray],
        agent_metrics: Mapping[str, Mapping[str, float]],
        byte_rows: Iterable[Mapping[str, Any]],
    ) -> None:
        """Persist a completed round atomically (state file first, then the rows)."""
        state_file = self.dir / "strategy" / f"round-{round_:05d}.npz"
        _atomic_npz(state_file, state)
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?)",
                (round_, time.time(), json.dumps(dict(metrics)), state_file.name),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO agent_rounds VALUES (?, ?, ?)",
                [(round_, a, json.dumps(dict(m))) for a, m in agent_metrics.items()],
            )
            self._db.execute("DELETE FROM bytes")
            self._db.executemany(
                "INSERT INTO bytes VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r["round"],
                        r["agent_id"],
                        r["direction"],
                        r["kind"],
                        r["bytes"],
                        r["messages"],
                        r["frames"],
                    )
                    for r in byte_rows
                ],
            )

    def last_round(self) -> RoundRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT round, metrics, state_file FROM rounds ORDER BY round DESC LIMIT 1"
            ).fetchone()
        return None if row is None else RoundRow(row[0], json.loads(row[1]), row[2])

    def rounds(self) -> list[RoundRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT round, metrics, state_file FROM rounds ORDER BY round"
            ).fetchall()
        return [RoundRow(r[0], json.loads(r[1]), r[2]) for r in rows]

    def agent_rounds(self) -> dict[str, dict[int, dict[str, float]]]:
        with self._lock:
            rows = self._db.execute("SELECT round, agent_id, metrics FROM agent_rounds").fetchall()
        out: dict[str, dict[int, dict[str, float]]] = {}
        for rnd, agent, metrics in rows:
            out.setdefault(agent, {})[rnd] = json.loads(metrics)
        return out

    def load_state(self, row: RoundRow) -> dict[str, np.ndarray]:
        with np.load(self.dir / "strategy" / row.state_file, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def byte_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM bytes").fetchall()
        keys = ("round", "agent_id", "direction", "kind", "bytes", "messages", "frames")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def save_finals(self, finals: Mapping[str, Mapping[str, Any]]) -> None:
        """Final reports (agent id -> metrics) in one transaction."""
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO finals VALUES (?, ?)",
                [(a, json.dumps(dict(m))) for a, m in finals.items()],
            )

    def finals(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT agent_id, metrics FROM finals").fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}


def _atomic_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    # Typed loosely: mypy would match the arrays against savez's allow_pickle keyword.
    savez: Callable[..., None] = np.savez
    try:
        with os.fdopen(fd, "wb") as f:
            savez(f, **dict(arrays))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Job records and events in an embedded SQLite database (WAL mode)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, config_yaml TEXT NOT NULL,
  created_at REAL NOT NULL, started_at REAL NOT NULL DEFAULT 0, finished_at REAL NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '', step INTEGER NOT NULL DEFAULT 0, metrics TEXT NOT NULL DEFAULT '{}',
  run_dir TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS events (
  job_id TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,
  PRIMARY KEY (job_id, seq));
"""

STATES = ("queued", "running", "paused", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class JobRecord:
    id: str
    name: str
    state: str
    config_yaml: str
    created_at: float
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str = ""
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    run_dir: str = ""


@dataclass
class Event:
    job_id: str
    seq: int
    time: float
    kind: str
    payload: dict


class JobStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def create(self, rec: JobRecord) -> None:
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, name, state, config_yaml, created_at, run_dir) VALUES "
                             "(?, ?, ?, ?, ?, ?)", (rec.id, rec.name, rec.state, rec.config_yaml, rec.created_at,
                                                    rec.run_dir))

    def update(self, job_id: str, **fields) -> None:
        if "metrics" in fields:
            fields["metrics"] = json.dumps(fields["metrics"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT id, name, state, config_yaml, created_at, started_at, finished_at, "
                                   "error, step, metrics, run_dir FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def list(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, state, config_yaml, created_at, started_at, finished_at, "
                                    "error, step, metrics, run_dir FROM jobs ORDER BY created_at").fetchall()
        return [_record(r) for r in rows]

    def append_event(self, job_id: str, kind: str, payload: dict) -> Event:
        now = time.time()
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,)).fetchone()
            seq = row[0] + 1
            self._db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", (job_id, seq, now, kind,
                                                                          json.dumps(payload)))
        return Event(job_id, seq, now, kind, payload)

    def events(self, job_id: str, after_seq: int = 0) -> list[Event]:
        with self._lock:
            rows = self._db.execute("SELECT job_id, seq, time, kind, payload FROM events WHERE job_id = ? AND "
                                    "seq > ? ORDER BY seq", (job_id, after_seq)).fetchall()
        return [Event(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def close(self) -> None:
        self._db.close()


def _record(row) -> JobRecord:
    return JobRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], json.loads(row[9]),
                     row[10])

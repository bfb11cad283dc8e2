"""Job records and events in an embedded SQLite database (WAL mode)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path

from alignmesh.services.common.errors import Unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, config_yaml TEXT NOT NULL,
  created_at REAL NOT NULL, started_at REAL NOT NULL DEFAULT 0, finished_at REAL NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '', step INTEGER NOT NULL DEFAULT 0, metrics TEXT NOT NULL DEFAULT '{}',
  run_dir TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS events (
  job_id TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,
  PRIMARY KEY (job_id, seq));
CREATE INDEX IF NOT EXISTS jobs_by_creation ON jobs (created_at, id);
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


class StoreFault(Unavailable):
    """The job database refuses a read or write (disk full, a lock held elsewhere, I/O error). Nothing was
    written; the caller may retry once the fault clears."""


def _guarded(method):
    @wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreFault(f"coordinator: its job database {self.path} fails ({exc}); retry once it is "
                             f"writable again") from exc
    return run


class JobStore:
    """Every method raises StoreFault (UNAVAILABLE) when SQLite fails; a lock held elsewhere is waited for at most
    ``busy_s`` per call, so a stuck database never blocks the coordinator's event loop for long."""

    def __init__(self, path: str | Path, busy_s: float = 1.0):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=busy_s)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    @_guarded
    def create(self, rec: JobRecord) -> None:
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, name, state, config_yaml, created_at, run_dir) VALUES "
                             "(?, ?, ?, ?, ?, ?)", (rec.id, rec.name, rec.state, rec.config_yaml, rec.created_at,
                                                    rec.run_dir))

    @_guarded
    def update(self, job_id: str, **fields) -> None:
        if "metrics" in fields:
            fields["metrics"] = json.dumps(fields["metrics"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    @_guarded
    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT id, name, state, config_yaml, created_at, started_at, finished_at, "
                                   "error, step, metrics, run_dir FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    @_guarded
    def list(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, state, config_yaml, created_at, started_at, finished_at, "
                                    "error, step, metrics, run_dir FROM jobs ORDER BY created_at").fetchall()
        return [_record(r) for r in rows]

    @_guarded
    def page(self, limit: int, after: tuple[float, str] | None = None, state: str = "") -> list[JobRecord]:
        """Up to ``limit`` jobs after ``after`` = (created_at, id), oldest first (keyset paging: a page costs the
        same however many jobs precede it), optionally only those in ``state``."""
        where, args = [], []
        if after is not None:
            where.append("(created_at, id) > (?, ?)")
            args += list(after)
        if state:
            where.append("state = ?")
            args.append(state)
        sql = ("SELECT id, name, state, config_yaml, created_at, started_at, finished_at, error, step, metrics, "
               "run_dir FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") +
               " ORDER BY created_at, id LIMIT ?")
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [_record(r) for r in rows]

    @_guarded
    def counts(self) -> dict[str, int]:
        """Jobs by state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    @_guarded
    def append_event(self, job_id: str, kind: str, payload: dict) -> Event:
        now = time.time()
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,)).fetchone()
            seq = row[0] + 1
            self._db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", (job_id, seq, now, kind,
                                                                          json.dumps(payload)))
        return Event(job_id, seq, now, kind, payload)

    @_guarded
    def events(self, job_id: str, after_seq: int = 0) -> list[Event]:
        with self._lock:
            rows = self._db.execute("SELECT job_id, seq, time, kind, payload FROM events WHERE job_id = ? AND "
                                    "seq > ? ORDER BY seq", (job_id, after_seq)).fetchall()
        return [Event(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    @_guarded
    def probe(self) -> None:
        """A write that changes nothing: raises StoreFault while the database cannot be written."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("CREATE TABLE IF NOT EXISTS probe (x INTEGER)")
            self._db.execute("INSERT INTO probe VALUES (1)")
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()


def _record(row) -> JobRecord:
    return JobRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], json.loads(row[9]),
                     row[10])

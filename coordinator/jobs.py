"""Jobs: validated at submit, queued, run one at a time against the role services, persisted in SQLite."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from pathlib import Path

from alignmesh.coordinator import metrics as cmetrics
from alignmesh.coordinator.config import JobConfig, parse_job_config
from alignmesh.coordinator.flows.base import KNOBS, Control
from alignmesh.coordinator.flows.registry import FLOWS, resolve
from alignmesh.coordinator.handles import TrainerUnavailable, endpoints, probe
from alignmesh.coordinator.runner import run_job
from alignmesh.coordinator.store import FINAL, STATES, Event, JobRecord, JobStore, StoreFault
from alignmesh.coordinator.membership import Membership
from alignmesh.services.common import durable
from alignmesh.services.common.config import dump_yaml, from_dict
from alignmesh.services.common.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound
from alignmesh.services.common.paths import path_policy
from alignmesh.services.common.settings import ClusterConfig

log = logging.getLogger("alignmesh.jobs")


def validate(text: str, cluster: ClusterConfig) -> JobConfig:
    """Parse and check a job config completely (flow params included) before anything is written."""
    cfg = parse_job_config(text)
    flow = resolve(cfg.algorithm, cluster.coordinator.flow_dirs, cluster.coordinator.flow_modules)
    params = from_dict(flow.Params, cfg.params, "params")
    if cfg.max_staleness and not getattr(flow, "asynchronous", False):
        raise ConfigError(f"max_staleness: the {cfg.algorithm} flow trains synchronously; set 0 (flows that run "
                          f"ahead: {[n for n in FLOWS.names() if getattr(FLOWS.get(n), 'asynchronous', False)]})")
    if cfg.max_staleness and cluster.colocate:
        raise ConfigError(f"max_staleness: colocated roles ({cluster.colocate}) take turns with one device group, so "
                          f"nothing can run ahead; set 0, or give the roles their own devices")
    if cfg.environment is not None:
        if not getattr(flow, "episodes", False):
            raise ConfigError(f"environment: the {cfg.algorithm} flow trains on single completions; episodes run with "
                              f"{[n for n in FLOWS.names() if getattr(FLOWS.get(n), 'episodes', False)]}")
        if not cluster.endpoints.get("environment"):
            raise ConfigError("environment: this cluster runs no environment service; start one (environment.replicas"
                              " >= 1 in the cluster config, or endpoints.environment) or drop the job's environment")
    paths = path_policy(cluster)  # every file a job names lies where the operator allows
    for field, value in (("init", cfg.init), ("dataset.train", cfg.dataset.train), ("dataset.test", cfg.dataset.test),
                         ("dataset.path", cfg.dataset.path), ("params.pairs", getattr(params, "pairs", None))):
        if value:
            paths.check(field, value)
    cfg.check_environment()  # after the confinement: a job learns nothing of files outside the allowed places
    if cfg.wandb is not None and cfg.wandb.mode == "online" and not cluster.coordinator.trackers_online:
        raise ConfigError("wandb.mode: online sends the job's metrics off this cluster, which its operator has not "
                          "allowed (coordinator.trackers_online); use mode: offline and `wandb sync` the run's files")
    return cfg


class JobManager:
    def __init__(self, cluster: ClusterConfig, store: JobStore):
        self.cluster, self.store = cluster, store
        self.membership = Membership(cluster.endpoints)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._watchers: dict[str, list[asyncio.Queue]] = {}
        self._controls: dict[str, Control] = {}
        self._worker: asyncio.Task | None = None

    def write_targets(self) -> None:
        """The registered members' metrics addresses as a Prometheus file_sd file (``coordinator.targets_file``),
        rewritten when they change."""
        path = self.cluster.coordinator.targets_file
        if not path:
            return
        text = json.dumps(self.membership.scrape_targets(), indent=1)
        if text != getattr(self, "_targets_text", None):
            durable.write_text(Path(path), text, mode=0o644)  # read by Prometheus (another user)
            self._targets_text = text

    def start(self) -> None:
        for rec in self.store.list():  # jobs left queued or running by a previous coordinator process
            if rec.state in ("queued", "running", "paused"):
                self._controls[rec.id] = Control()
                if rec.state == "paused":
                    self._controls[rec.id].running.clear()
                self._queue.put_nowait(rec.id)
        self._worker = asyncio.create_task(self._work())
        self._count_jobs()

    def _count_jobs(self) -> None:
        """The ``alignmesh_jobs{state}`` gauge, from the store (after every state change)."""
        counts = {**dict.fromkeys(STATES, 0), **self.store.counts()}
        for state, n in counts.items():
            cmetrics.JOBS.labels(state).set(n)

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()

    def submit(self, text: str, name: str) -> JobRecord:
        cfg = validate(text, self.cluster)
        job_id = uuid.uuid4().hex[:12]
        run_dir = str(Path(self.cluster.coordinator.runs_dir).expanduser().resolve() / job_id)
        rec = JobRecord(job_id, name or cfg.algorithm, "queued", dump_yaml(cfg), time.time(), run_dir=run_dir)
        self.store.create(rec)
        self._controls[job_id] = Control()
        self.emit(job_id, "state", {"state": "queued"})
        self._queue.put_nowait(job_id)
        return rec

    def get(self, job_id: str) -> JobRecord:
        rec = self.store.get(job_id)
        if rec is None:
            raise NotFound(f"job_id: no job {job_id!r}")
        return rec

    def cancel(self, job_id: str) -> JobRecord:
        rec = self.get(job_id)
        if rec.state in FINAL:
            raise FailedPrecondition(f"job_id: job {job_id} already ended ({rec.state})")
        self._controls[job_id].cancel.set()
        if rec.state == "queued":
            self._finish(job_id, "cancelled", "")
        return self.get(job_id)

    def _live(self, job_id: str) -> tuple[JobRecord, Control]:
        rec = self.get(job_id)
        if rec.state in FINAL:
            raise FailedPrecondition(f"job_id: job {job_id} already ended ({rec.state})")
        return rec, self._controls[job_id]

    def pause(self, job_id: str) -> JobRecord:
        rec, control = self._live(job_id)
        if control.running.is_set():
            control.running.clear()
            self.store.update(job_id, state="paused")
            self.emit(job_id, "state", {"state": "paused"})
        return self.get(job_id)

    def resume(self, job_id: str) -> JobRecord:
        rec, control = self._live(job_id)
        if not control.running.is_set():
            control.running.set()
            state = "running" if rec.started_at else "queued"
            self.store.update(job_id, state=state)
            self.emit(job_id, "state", {"state": state})
        return self.get(job_id)

    def update(self, job_id: str, knobs: dict[str, float]) -> JobRecord:
        _, control = self._live(job_id)
        if not knobs:
            raise InvalidArgument("knobs", f"is empty; set one of {sorted(KNOBS)}")
        for name, value in knobs.items():
            if name not in KNOBS:
                raise InvalidArgument(f"knobs.{name}", f"unknown knob; live knobs are {sorted(KNOBS)}")
            low, inclusive = KNOBS[name]
            if not math.isfinite(value):
                raise InvalidArgument(f"knobs.{name}", f"must be a finite number, got {value}")
            if value < low or (value == low and not inclusive):
                raise InvalidArgument(f"knobs.{name}", f"must be {'>=' if inclusive else '>'} {low}, got {value}")
        control.knobs.update(knobs)
        self.emit(job_id, "update", {"metrics": dict(knobs), "message": f"knobs changed: {knobs}"})
        return self.get(job_id)

    def emit(self, job_id: str, kind: str, payload: dict) -> Event:
        event = self.store.append_event(job_id, kind, payload)
        if kind == "step":
            cmetrics.observe_step(payload.get("stage", ""), payload["metrics"])
            self.store.update(job_id, step=payload["step"], metrics=payload["metrics"])
        if kind == "state":
            self._count_jobs()
        if kind == "eval" and "accuracy" in payload.get("metrics", {}):
            cmetrics.ACCURACY.set(payload["metrics"]["accuracy"])
        for q in self._watchers.get(job_id, []):
            q.put_nowait(event)
        return event

    async def watch(self, job_id: str, after_seq: int, replay_only: bool = False):
        self.get(job_id)
        if replay_only:
            for ev in self.store.events(job_id, after_seq):
                yield ev
            return
        q: asyncio.Queue = asyncio.Queue()
        self._watchers.setdefault(job_id, []).append(q)
        try:
            last = after_seq
            for ev in self.store.events(job_id, after_seq):
                last = ev.seq
                yield ev
            while self.get(job_id).state not in FINAL or not q.empty():
                try:
                    ev = await asyncio.wait_for(q.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    continue
                if ev.seq > last:
                    last = ev.seq
                    yield ev
        finally:
            self._watchers[job_id].remove(q)

    def _finish(self, job_id: str, state: str, error: str) -> None:
        self.store.update(job_id, state=state, error=error, finished_at=time.time())
        self.emit(job_id, "state", {"state": state, "message": error})

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self._run_one(job_id)
            except StoreFault as exc:
                await self._outlast(job_id, exc)

    async def _run_one(self, job_id: str) -> None:
        rec = self.get(job_id)
        if rec.state in FINAL:
            return
        control = self._controls[job_id]
        state = "running" if control.running.is_set() else "paused"
        self.store.update(job_id, state=state, started_at=rec.started_at or time.time())
        self.emit(job_id, "state", {"state": state})
        try:
            while not await self._run_outlasting_trainer(job_id, control):
                pass
        except (asyncio.CancelledError, StoreFault):
            raise
        except Exception as exc:  # the job fails, the coordinator keeps serving
            if control.cancel.is_set():
                self._finish(job_id, "cancelled", "")
            else:
                log.exception("job %s failed", job_id)
                self._finish(job_id, "failed", f"{type(exc).__name__}: {exc}")
        else:
            self._finish(job_id, "cancelled" if control.cancel.is_set() else "succeeded", "")

    async def _run_outlasting_trainer(self, job_id: str, control: Control) -> bool:
        """Run the job; True when it ended. A lost trainer (or critic) is waited for and the job resumes from its
        last checkpoint (False: run it again), as after a coordinator restart; past the wait, TrainerUnavailable."""
        try:
            await run_job(self, self.get(job_id), control)
            return True
        except TrainerUnavailable as exc:
            if control.cancel.is_set():
                return True
            wait_s = self.cluster.coordinator.trainer_recovery_s
            self.emit(job_id, "log", {"message": f"trainer lost ({exc}); waiting up to {wait_s:.0f}s for it to "
                                                 f"come back"})
            if not await self._trainer_back(wait_s, control):
                raise
            self.emit(job_id, "log", {"message": "trainer is back; resuming from the last checkpoint"})
            return False

    async def _trainer_back(self, wait_s: float, control: Control) -> bool:
        """Wait until every trainer and critic endpoint answers its health check (or the job is cancelled)."""
        addresses = self.cluster.endpoints["trainer"] + self.cluster.endpoints.get("critic", [])
        eps = endpoints("trainer", addresses, self.cluster.security, lambda channel: None)
        deadline = time.monotonic() + wait_s
        try:
            while time.monotonic() < deadline and not control.cancel.is_set():
                if all([await probe(ep) for ep in eps]):
                    return True
                await asyncio.sleep(0.5)
            return False
        finally:
            await asyncio.gather(*(ep.channel.close() for ep in eps))

    async def _outlast(self, job_id: str, exc: StoreFault) -> None:
        """The job database failed under a job (disk full, a lock held elsewhere): NOT_SERVING, with the error in
        the log, until a probe write succeeds (backoff to 5 s); then the job is queued again and resumes from its
        last checkpoint, exactly as after a coordinator restart. Nothing is lost; the queue keeps its order."""
        log.error("%s; NOT_SERVING until it can be written; job %s will resume from its last checkpoint", exc, job_id)
        self.report_health(False)
        delay = 0.2
        while True:
            await asyncio.sleep(delay)
            try:
                self.store.probe()
                self.store.update(job_id, state="queued")
                self.emit(job_id, "log", {"message": f"requeued after a job-database fault ({exc}); resuming from "
                                                     f"the last checkpoint"})
                break
            except StoreFault:
                delay = min(5.0, delay * 2)
        log.info("job database writable again; SERVING; job %s requeued", job_id)
        self.report_health(True)
        self._queue.put_nowait(job_id)

    def report_health(self, serving: bool) -> None:
        """Replaced by the server with a function that sets the health status (see ``servicer.build_coordinator``)."""

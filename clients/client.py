"""The Python client: ``alignmesh.Client(address, token=...)`` drives jobs on a coordinator."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import grpc
import yaml

from alignmesh.clients import errors
from alignmesh.clients.errors import JobFailed
from alignmesh.protos.coordinator.v1 import coordinator_pb2, coordinator_pb2_grpc

STATES = {coordinator_pb2.JOB_STATE_QUEUED: "queued", coordinator_pb2.JOB_STATE_RUNNING: "running",
          coordinator_pb2.JOB_STATE_SUCCEEDED: "succeeded", coordinator_pb2.JOB_STATE_FAILED: "failed",
          coordinator_pb2.JOB_STATE_CANCELLED: "cancelled", coordinator_pb2.JOB_STATE_PAUSED: "paused",
          coordinator_pb2.JOB_STATE_UNSPECIFIED: ""}
FINAL = ("succeeded", "failed", "cancelled")
SAFE_RETRY = (grpc.StatusCode.UNAVAILABLE,)


def _typed(method):
    """Turn a gRPC failure of a client call into its ``alignmesh.errors`` class (the status kept)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except grpc.RpcError as exc:
            raise errors.typed(exc, self.address) from exc
    return call


def _typed_stream(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            yield from method(self, *args, **kwargs)
        except grpc.RpcError as exc:
            raise errors.typed(exc, self.address) from exc
    return call


@dataclass
class Job:
    id: str
    name: str
    state: str
    step: int
    metrics: dict[str, float]
    error: str
    run_dir: str
    config_yaml: str = ""
    created_at: float = 0.0
    finished_at: float = 0.0


@dataclass
class Event:
    job_id: str
    seq: int
    time: float
    kind: str  # "state", "step", "eval", "log", "update", "checkpoint"
    state: str = ""
    stage: str = ""
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


@dataclass
class Member:
    role: str
    address: str
    source: str  # "config", "dns" or "registered"
    state: str  # "active", "draining" or "drained"
    lease_left_s: float = 0.0
    metrics_address: str = ""


def _job(msg: coordinator_pb2.Job) -> Job:
    return Job(msg.id, msg.name, STATES[msg.state], msg.step, dict(msg.metrics), msg.error, msg.run_dir,
               msg.config_yaml, msg.created_at, msg.finished_at)


def _event(msg: coordinator_pb2.JobEvent) -> Event:
    return Event(msg.job_id, msg.seq, msg.time, msg.kind, STATES[msg.state], msg.stage, msg.step,
                 dict(msg.metrics), msg.message)


class Client:
    """Every call has a deadline (``timeout_s``); only idempotent reads are retried, on UNAVAILABLE."""

    def __init__(self, address: str, token: str | None = None, timeout_s: float = 30.0, retries: int = 3,
                 root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None):
        """TLS when ``root_certificates`` is given (PEM of the cluster's CA); a cluster with a CA also requires a
        client certificate: ``private_key`` and ``certificate_chain``."""
        opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        creds = (grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
                 if root_certificates else None)
        self._channel = (grpc.secure_channel(address, creds, options=opts) if creds
                         else grpc.insecure_channel(address, options=opts))
        self._stub = coordinator_pb2_grpc.CoordinatorServiceStub(self._channel)
        self._meta = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s, self.retries, self.address = timeout_s, retries, address

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _read(self, method: str, request):
        for attempt in range(self.retries + 1):
            try:
                return getattr(self._stub, method)(request, timeout=self.timeout_s, metadata=self._meta)
            except grpc.RpcError as exc:
                if exc.code() not in SAFE_RETRY or attempt == self.retries:
                    raise
                time.sleep(0.2 * 2 ** attempt)

    @_typed
    def submit(self, config: str | dict | Path, name: str = "") -> Job:
        """Submit a job config (YAML text, a dict, or a path to a YAML file). Not retried: not idempotent."""
        if isinstance(config, Path) or (isinstance(config, str) and config.endswith((".yaml", ".yml"))
                                        and Path(config).is_file()):
            text = Path(config).read_text()
        elif isinstance(config, dict):
            text = yaml.safe_dump(config)
        else:
            text = config
        req = coordinator_pb2.SubmitJobRequest(config_yaml=text, name=name)
        return _job(self._stub.SubmitJob(req, timeout=self.timeout_s, metadata=self._meta))

    @_typed
    def get(self, job_id: str) -> Job:
        return _job(self._read("GetJob", coordinator_pb2.GetJobRequest(job_id=job_id)))

    def list(self, state: str = "", page_size: int = 500) -> list[Job]:
        """Every job (optionally only those in ``state``), oldest first, fetched a page at a time."""
        jobs, token = [], ""
        while True:
            page, token = self.page(page_size, token, state)
            jobs += page
            if not token:
                return jobs

    @_typed
    def page(self, page_size: int = 100, page_token: str = "", state: str = "") -> tuple[list[Job], str]:
        """One page of jobs and the token of the next one ("" after the last)."""
        reply = self._read("ListJobs", coordinator_pb2.ListJobsRequest(page_size=page_size, page_token=page_token,
                                                                       state=state))
        return [_job(j) for j in reply.jobs], reply.next_page_token

    @_typed
    def cancel(self, job_id: str) -> Job:
        return _job(self._stub.CancelJob(coordinator_pb2.CancelJobRequest(job_id=job_id), timeout=self.timeout_s,
                                         metadata=self._meta))

    @_typed
    def pause(self, job_id: str) -> Job:
        """Hold the job between steps (idempotent). Returns at once; the step in flight finishes, then the job
        logs ``paused after step N`` when the hold has taken effect."""
        return _job(self._read("PauseJob", coordinator_pb2.PauseJobRequest(job_id=job_id)))

    @_typed
    def resume(self, job_id: str) -> Job:
        return _job(self._read("ResumeJob", coordinator_pb2.ResumeJobRequest(job_id=job_id)))

    @_typed
    def update(self, job_id: str, **knobs: float) -> Job:
        """Change live knobs (learning_rate, kl_coef, temperature, eval_every) from the next step on."""
        req = coordinator_pb2.UpdateJobRequest(job_id=job_id, knobs={k: float(v) for k, v in knobs.items()})
        return _job(self._read("UpdateJob", req))

    @_typed
    def scale(self, role: str, replicas: int) -> int:
        """Ask for ``replicas`` replicas of ``role`` (rollout, reward or reference). A launcher that owns the
        processes (``alignmesh up``) starts or drains replicas to match; running jobs take new ones in at their next
        step, at the current weight version. Idempotent."""
        req = coordinator_pb2.ScaleRoleRequest(role=role, replicas=replicas)
        return self._read("ScaleRole", req).replicas

    @_typed
    def members(self) -> tuple[list[Member], dict[str, int]]:
        """The replicas the coordinator knows, and the replica counts asked for by ``scale``."""
        reply = self._read("ListMembers", coordinator_pb2.ListMembersRequest())
        return ([Member(m.role, m.address, m.source, m.state, m.lease_left_s, m.metrics_address)
                 for m in reply.members], dict(reply.desired))

    @_typed
    def register_member(self, role: str, address: str, lease_s: float = 0.0, leaving: bool = False,
                        metrics_address: str = "") -> Member:
        """Register (or renew, or with ``leaving`` drain) a replica at ``address``. Idempotent."""
        req = coordinator_pb2.RegisterMemberRequest(role=role, address=address, lease_s=lease_s, leaving=leaving,
                                                    metrics_address=metrics_address)
        m = self._read("RegisterMember", req)
        return Member(m.role, m.address, m.source, m.state, m.lease_left_s, m.metrics_address)

    @_typed_stream
    def watch(self, job_id: str, after_seq: int = 0, timeout_s: float = 7 * 24 * 3600) -> Iterator[Event]:
        """Yield events until the job ends; reconnects from the last seen event when the stream drops."""
        last, deadline = after_seq, time.monotonic() + timeout_s
        while True:
            try:
                stream = self._stub.WatchJob(coordinator_pb2.WatchJobRequest(job_id=job_id, after_seq=last),
                                             timeout=max(1.0, deadline - time.monotonic()), metadata=self._meta)
                for msg in stream:
                    last = msg.seq
                    yield _event(msg)
                return
            except grpc.RpcError as exc:
                if exc.code() not in SAFE_RETRY or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    @_typed
    def events(self, job_id: str, after_seq: int = 0) -> list[Event]:
        """The job's events so far (does not wait for new ones)."""
        req = coordinator_pb2.WatchJobRequest(job_id=job_id, after_seq=after_seq, replay_only=True)
        return [_event(m) for m in self._stub.WatchJob(req, timeout=self.timeout_s, metadata=self._meta)]

    @_typed
    def wait(self, job_id: str, timeout_s: float = 7 * 24 * 3600) -> Job:
        """Block until the job ends; returns it (final metrics in ``job.metrics``); raises JobFailed on failure."""
        for _ in self.watch(job_id, timeout_s=timeout_s):
            pass
        job = self.get(job_id)
        if job.state == "failed":
            raise JobFailed(job_id, job.error)
        return job

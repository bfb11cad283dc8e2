"""The local cluster: every role (and replica) as its own OS process on loopback, health-checked."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alignmesh.clients.local_state import read_state, state_file
from alignmesh.deploy.serve import COMPUTE_ROLES, default_threads
from alignmesh.services.common.config import dump_yaml
from alignmesh.services.common.errors import ConfigError
from alignmesh.services.common.server import channel_credentials
from alignmesh.services.common.settings import ClusterConfig, SecurityConfig
from alignmesh.services.models.tiny import ensure_model

START_ORDER = ("trainer", "critic", "rollout", "reference", "reward", "environment", "coordinator")


@dataclass
class Member:
    role: str
    replica: int
    port: int
    metrics_port: int
    pid: int = 0
    log: str = ""

    @property
    def name(self) -> str:
        return f"{self.role}-{self.replica}"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _free_ports(count: int, host: str) -> list[int]:
    """``count`` distinct free ports: every socket stays bound until all are chosen, so none repeats."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def plan(cfg: ClusterConfig) -> list[Member]:
    members, next_port = [], cfg.base_port
    pool = [] if cfg.base_port else _free_ports(2 * sum(cfg.replicas(r) for r in START_ORDER), cfg.host)
    for role in START_ORDER:
        for replica in range(cfg.replicas(role)):
            if cfg.base_port:
                port, mport, next_port = next_port, next_port + 1, next_port + 2
                for p, what in ((port, "gRPC"), (mport, "metrics")):
                    if not port_free(p, cfg.host):
                        raise ConfigError(f"base_port: port {p} ({role} replica {replica} {what}) is already in use; "
                                          f"pick another base_port or 0 for free ports")
            else:
                port, mport = pool.pop(), pool.pop()
            members.append(Member(role, replica, port, mport))
    return members


def die_with_parent(parent_pid: int) -> None:
    """Linux: this process gets SIGTERM when its launcher ``parent_pid`` dies, so no service outlives it.

    A service calls it itself as it starts (``alignmesh serve --parent-pid``), never the launcher between fork and
    exec: a ``preexec_fn`` makes Python fork with gRPC's fork handlers, whose child side can restart gRPC's poller
    in the child just before ``close_fds`` closes its descriptors — the child then aborts (``epoll_wait: Bad file
    descriptor``) before it execs."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent_pid:  # the launcher died before the line above: no signal would come
        os.kill(os.getpid(), signal.SIGTERM)


def spawn(cmd: list[str], log_path: str, env: dict[str, str]) -> subprocess.Popen:
    """Start a service process with its output appended to ``log_path``; no Python code runs between fork and
    exec (see ``die_with_parent``)."""
    with open(log_path, "a") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def health_ok(address: str, timeout: float = 1.0, security: SecurityConfig | None = None) -> bool:
    """The standard health check (no token needed), over TLS when ``security`` has it."""
    creds = channel_credentials(security) if security is not None else None
    with (grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


class LocalCluster:
    def __init__(self, cfg: ClusterConfig, detach: bool = False):
        self.cfg, self.detach = cfg, detach
        self.state_dir = Path(cfg.state_dir).expanduser().resolve()
        self.members: list[Member] = []
        self._procs: list[subprocess.Popen] = []

    def address(self, m: Member) -> str:
        return f"{self.cfg.host}:{m.port}"

    def coordinator_address(self) -> str:
        return next(self.address(m) for m in self.members if m.role == "coordinator")

    def _resolve(self) -> Path:
        self.cfg.model = str(ensure_model(self.cfg))  # creates the embedded default once, before any process
        self.members = plan(self.cfg)
        self.cfg.endpoints = {r: [self.address(m) for m in self.members if m.role == r] for r in START_ORDER}
        self.cfg.coordinator.store_host = self.cfg.host
        self.cfg.coordinator.db = str((self.state_dir / Path(self.cfg.coordinator.db)).resolve()) \
            if not Path(self.cfg.coordinator.db).is_absolute() else self.cfg.coordinator.db
        self.cfg.coordinator.runs_dir = str(Path(self.cfg.coordinator.runs_dir).expanduser().resolve())
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        resolved = self.state_dir / "cluster.resolved.yaml"
        resolved.touch(mode=0o600)  # it may hold security.token: readable by its owner only
        resolved.chmod(0o600)
        resolved.write_text(dump_yaml(self.cfg))
        return resolved

    def start(self, timeout_s: float = 180.0) -> None:
        """Start every process and wait for health. With free ports (``base_port: 0``) a port taken by another
        program between choosing and binding it is retried with fresh ports, twice at most."""
        for attempt in range(3):
            try:
                return self._start_once(timeout_s)
            except RuntimeError as exc:
                if self.cfg.base_port or "already in use" not in str(exc) or attempt == 2:
                    raise
                self._procs, self.members = [], []

    def _start_once(self, timeout_s: float) -> None:
        self.resolved = self._resolve()
        for m in self.members:
            m.log = str(self.state_dir / "logs" / f"{m.name}.log")
            self._procs.append(self._spawn(m))
        self._write_state()
        try:
            self._wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, m: Member) -> subprocess.Popen:
        threads = str(default_threads(self.cfg, m.role))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "alignmesh.deploy.cli", "serve", m.role, "--config", str(self.resolved),
               "--port", str(m.port), "--metrics-port", str(m.metrics_port)]
        if not self.detach:
            cmd += ["--parent-pid", str(os.getpid())]
        proc = spawn(cmd, m.log, env)
        m.pid = proc.pid
        return proc

    def process(self, role: str, replica: int = 0) -> subprocess.Popen:
        return self._procs[self._index(role, replica)]

    def _index(self, role: str, replica: int) -> int:
        return next(i for i, m in enumerate(self.members) if m.role == role and m.replica == replica)

    def restart(self, role: str, replica: int = 0, timeout_s: float = 120.0) -> None:
        """Start a member again (same ports) after it died or was stopped, and wait for its health."""
        i = self._index(role, replica)
        if self._procs[i].poll() is None:
            raise RuntimeError(f"{role}-{replica} is still running")
        self._procs[i] = self._spawn(self.members[i])
        self._write_state()
        deadline = time.monotonic() + timeout_s
        while not health_ok(self.address(self.members[i]), security=self.cfg.security):
            if self._procs[i].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{role}-{replica} did not come back (log: {self.members[i].log})")
            time.sleep(0.2)

    def add_member(self, role: str) -> Member:
        """Start one more replica of ``role`` on fresh ports (not waited for: see ``member_healthy``)."""
        replica = 1 + max((m.replica for m in self.members if m.role == role), default=-1)
        port, mport = _free_ports(2, self.cfg.host)
        m = Member(role, replica, port, mport, log=str(self.state_dir / "logs" / f"{role}-{replica}.log"))
        self.members.append(m)
        self._procs.append(self._spawn(m))
        self._write_state()
        return m

    def member_state(self, m: Member) -> str:
        """"serving", "starting" or "exited"."""
        if self._procs[self.members.index(m)].poll() is not None:
            return "exited"
        return "serving" if health_ok(self.address(m), security=self.cfg.security) else "starting"

    def remove_member(self, m: Member, grace_s: float = 15.0) -> None:
        """Stop one replica (SIGTERM: in-flight calls finish; SIGKILL after ``grace_s``) and forget it."""
        i = self.members.index(m)
        proc = self._procs[i]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        del self.members[i], self._procs[i]
        self._write_state()

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(zip(self.members, self._procs))
        while pending:
            for m, proc in list(pending):
                if proc.poll() is not None:
                    tail = Path(m.log).read_text().strip().splitlines()[-1:] or ["(no output)"]
                    raise RuntimeError(f"{m.name} exited with code {proc.returncode}: {tail[0]} (log: {m.log})")
                if health_ok(self.address(m), security=self.cfg.security):
                    pending.remove((m, proc))
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not healthy after {timeout_s:.0f}s: {[m.name for m, _ in pending]}")
            time.sleep(0.2)

    def _write_state(self) -> None:
        state = {"launcher_pid": os.getpid(), "host": self.cfg.host,
                 "members": [m.__dict__ for m in self.members]}
        state_file(self.state_dir).write_text(json.dumps(state, indent=2))

    def table(self) -> str:
        rows = [("role", "replica", "address", "metrics", "pid")]
        rows += [(m.role, str(m.replica), self.address(m), f"http://{self.cfg.host}:{m.metrics_port}/metrics",
                  str(m.pid)) for m in self.members]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every process (coordinator first), wait, SIGKILL stragglers. Leaves no process behind."""
        procs = list(reversed(self._procs))
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        state_file(self.state_dir).unlink(missing_ok=True)

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def down(state_dir: str, grace_s: float = 15.0) -> int:
    """Stop a cluster started by ``alignmesh up`` (by its state file). Returns how many processes were stopped."""
    state = read_state(state_dir)
    if state is None:
        return 0
    pids = [m["pid"] for m in state["members"]]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    state_file(state_dir).unlink(missing_ok=True)
    return len(pids)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


__all__ = ["LocalCluster", "Member", "plan", "down", "read_state", "health_ok", "COMPUTE_ROLES"]

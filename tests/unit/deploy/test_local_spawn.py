"""How the local cluster starts its service processes: never killed between fork and exec by gRPC's fork handlers,
and gone when their launcher dies (``deploy/local.py``: ``spawn``, ``die_with_parent``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from alignmesh.deploy.local import spawn

SPAWNS = 300


def test_services_spawned_while_grpc_is_busy_all_start(tmp_path):
    """The launcher polls health over gRPC while it starts members. With a ``preexec_fn`` (how members used to
    get their parent-death signal) about 2% of children aborted before exec (``epoll_wait: Bad file descriptor``
    from gRPC's poller restarted in the child, then closed by ``close_fds``): 8 of 400 here, so 300 spawns would
    pass that way with probability ~0.2%."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()

    def poll_health() -> None:
        while not stop.is_set():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                except grpc.RpcError:
                    pass

    pollers = [threading.Thread(target=poll_health, daemon=True) for _ in range(3)]
    for t in pollers:
        t.start()
    log = tmp_path / "children.log"
    try:
        codes = [spawn(["/bin/true"], str(log), dict(os.environ)).wait(timeout=30) for _ in range(SPAWNS)]
    finally:
        stop.set()
        for t in pollers:
            t.join(5)
        server.stop(None)
    assert codes == [0] * SPAWNS, f"{sum(c != 0 for c in codes)} children died: {sorted(set(codes))}"
    assert log.read_text() == ""  # and none printed a gRPC error before exec


CHILD = """
import sys, time
from alignmesh.deploy.local import die_with_parent
die_with_parent(int(sys.argv[1]))
open(sys.argv[2], "w").write("ready")
time.sleep(60)
"""

LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
print(child.pid, flush=True)
child.wait()
"""


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for its new parent to reap it counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_a_service_stops_when_its_launcher_is_killed(tmp_path):
    ready = tmp_path / "ready"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, CHILD, str(ready)], stdout=subprocess.PIPE,
                                text=True)
    child = int(launcher.stdout.readline())
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline and not gone(child), "the child never got ready"
        time.sleep(0.05)
    launcher.send_signal(signal.SIGKILL)  # no cleanup of its own: only the parent-death signal stops the child
    launcher.wait(10)
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert gone(child), "the service outlived its launcher by 5 s"
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_service_whose_launcher_is_already_gone_stops_at_once(tmp_path):
    """The launcher may die before the service asks for the signal: then its parent is no longer the launcher."""
    proc = subprocess.run([sys.executable, "-c", CHILD, "999999999", str(tmp_path / "ready")], timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert not (tmp_path / "ready").exists()

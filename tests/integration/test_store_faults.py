"""The coordinator's job database failing under a running job — a lock held by another process, then a full disk
(a small tmpfs) — turns the coordinator NOT_SERVING with a clear error (a submit gets UNAVAILABLE naming the
database); when the fault clears it is SERVING again and the job resumes from its last checkpoint to the end."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from alignmesh.clients.client import Client
from alignmesh.deploy.local import LocalCluster, health_ok
from alignmesh.services.common.settings import load_cluster_config

from helpers import cluster_yaml

pytestmark = pytest.mark.integration
JOB = ("algorithm: grpo\nsteps: 24\ncheckpoint_every: 4\nseed: 5\n"
       "params: {prompts_per_step: 8, group_size: 4, learning_rate: 1.0e-4}\n"
       "eval: {every: 100000, size: 20}\nsampling: {max_new_tokens: 3}\n")


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory):
    mount = tmp_path_factory.mktemp("db-tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory, tmpfs):
    tmp = tmp_path_factory.mktemp("store-faults")
    cfg = load_cluster_config(cluster_yaml(tmp, tiny_model_dir, coordinator={"runs_dir": str(tmp / "runs"),
                                                                            "db": str(tmpfs / "jobs.db")}))
    with LocalCluster(cfg) as c:
        yield c


def wait(predicate, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ride_out(cluster, fault_on, fault_off) -> None:
    """Run a job, put the fault on mid-job, check NOT_SERVING and UNAVAILABLE, clear it, see the job finish."""
    address = cluster.coordinator_address()
    with Client(address, timeout_s=30) as client:
        job = client.submit(JOB, name="faulted")
        wait(lambda: client.get(job.id).step >= 5, "step 5")
        fault_on()
        try:
            wait(lambda: not health_ok(address), "NOT_SERVING")
            with pytest.raises(grpc.RpcError) as err:
                client.submit(JOB)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "job database" in err.value.details()
        finally:
            fault_off()
        wait(lambda: health_ok(address), "SERVING again")
        done = client.wait(job.id, timeout_s=180)
        events = client.events(job.id)
    assert done.state == "succeeded" and done.step == 24, done.error
    assert any("requeued after a job-database fault" in e.message for e in events)


def test_a_held_lock(cluster):
    db = cluster.cfg.coordinator.db
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)

    def on():
        holder.execute("BEGIN EXCLUSIVE")

    def off():
        holder.execute("ROLLBACK")

    try:
        ride_out(cluster, on, off)
    finally:
        holder.close()


def test_a_full_disk(cluster, tmpfs):
    filler = Path(tmpfs) / "filler"

    def on():
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * (256 << 10))
                    fh.flush()
            except OSError:  # ENOSPC: the disk is full
                pass

    def off():
        filler.unlink()

    ride_out(cluster, on, off)

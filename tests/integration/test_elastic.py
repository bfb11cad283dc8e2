"""Elastic replicas during a running job: `alignmesh scale rollout=3`, then `rollout=1`, with the launcher's
supervision reconciling (as `alignmesh up` does). New replicas receive the current weights before they get work
and then generate; removed ones are drained and stopped; every step keeps its exact sample count."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from alignmesh.clients.client import Client
from alignmesh.deploy.supervise import Supervisor

from test_jobs import main_steps, start_cluster

pytestmark = pytest.mark.integration
PROMPTS, GROUP = 8, 4
JOB = f"""
steps: 100000
seed: 4
max_staleness: 1
params: {{prompts_per_step: {PROMPTS}, group_size: {GROUP}, learning_rate: 1.0e-4, off_policy: tis}}
eval: {{every: 100000, size: 20}}
sync: {{bucket_mb: 1, timeout_s: 10}}
reward_fn: digits
"""


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("elastic")
    c = start_cluster(tmp, tiny_model_dir, cpu_plan="overlapped",
                      coordinator={"targets_file": str(tmp / "targets.json")})
    said: list[str] = []
    supervisor = Supervisor(c, backoff_s=0.2, say=said.append)
    thread = threading.Thread(target=supervisor.run, kwargs={"poll_s": 0.1}, daemon=True)
    thread.start()
    yield c, said
    supervisor.stopped.set()
    thread.join(10)
    c.stop()


def wait(predicate, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def generated(cluster, member) -> float:
    """Generate calls a rollout replica has answered (its Prometheus counter)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{member.metrics_port}/metrics", timeout=5).read().decode()
    found = re.findall(r'alignmesh_rpc_total\{[^}]*method="Generate"[^}]*\} ([0-9.e+]+)', text)
    return sum(float(v) for v in found)


def test_scale_rollout_1_to_3_to_1_during_a_job(cluster):
    c, said = cluster
    cli = [sys.executable, "-m", "alignmesh.deploy.cli", "scale", "--coordinator", c.coordinator_address()]
    with Client(c.coordinator_address()) as client:
        job = client.submit(JOB, name="elastic")
        wait(lambda: client.get(job.id).step >= 3, "the job to train 3 steps")
        out = subprocess.run([*cli, "rollout=3"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "rollout: 3 replicas asked" in out.stdout, out.stderr
        wait(lambda: sum(m.role == "rollout" and m.state == "active" for m in client.members()[0]) == 3,
             "3 active rollout replicas")
        joined_at = client.get(job.id).step
        new = [m for m in c.members if m.role == "rollout" and m.replica > 0]
        assert len(new) == 2
        wait(lambda: all(generated(c, m) > 0 for m in new), "the new replicas to generate")
        three = client.get(job.id).step
        wait(lambda: client.get(job.id).step >= three + 3, "3 more steps on 3 replicas")

        assert client.scale("rollout", 1) == 1
        wait(lambda: [m.replica for m in c.members if m.role == "rollout"] == [0], "replicas 1 and 2 to stop")
        assert all(m.state == "drained" for m in client.members()[0] if m.address.endswith(
            tuple(f":{n.port}" for n in new)))
        one = client.get(job.id).step
        wait(lambda: client.get(job.id).step >= one + 3, "3 more steps on 1 replica")
        client.cancel(job.id)
        client.wait(job.id, timeout_s=60)
        steps = main_steps(client, job.id)
        logs = [e.message for e in client.events(job.id) if e.kind == "log"]
    assert sorted(steps) == list(range(1, max(steps) + 1))
    assert all(m["samples"] == PROMPTS * GROUP for m in steps.values())  # none lost or doubled
    assert any(m["rollout_replicas"] == 3 for s, m in steps.items() if s > joined_at)
    assert steps[max(steps)]["rollout_replicas"] == 1
    assert max(m["version_lag_max"] for m in steps.values()) <= 1
    assert any("rollout replicas: joined" in line for line in logs) and any("left" in line for line in logs)
    assert sum("draining" in line for line in said) == 2 and sum("stopped (drained)" in line for line in said) == 2


def test_a_replica_that_registers_itself_joins_and_leaves_on_sigterm(cluster, tmp_path):
    """`alignmesh serve rollout --register-with COORDINATOR --port 0`: no list names it; it registers once serving,
    gets work at the current weights, and says it is leaving on SIGTERM (drained; the job loses nothing)."""
    import os
    import signal

    c, _ = cluster
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "extra.log", "w")
    with Client(c.coordinator_address()) as client:
        job = client.submit(JOB.replace("seed: 4", "seed: 6"), name="self-registered")
        wait(lambda: client.get(job.id).step >= 2, "the job to train 2 steps")
        extra = subprocess.Popen([sys.executable, "-m", "alignmesh.deploy.cli", "serve", "rollout", "--config",
                                  str(c.resolved), "--port", "0", "--register-with", c.coordinator_address()],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait(lambda: any(m.source == "registered" and m.state == "active" for m in client.members()[0]),
                 "the new replica to register")
            (member,) = [m for m in client.members()[0] if m.source == "registered" and m.state == "active"]
            assert 0 < member.lease_left_s <= 30
            # Prometheus finds its metrics through the coordinator's file_sd file, and they answer there
            import json

            targets = json.loads(open(c.cfg.coordinator.targets_file).read())
            assert {"targets": [member.metrics_address], "labels": {"service": "rollout"}} in targets
            assert b"alignmesh_rpc_total" in urllib.request.urlopen(f"http://{member.metrics_address}/metrics",
                                                                    timeout=5).read()
            wait(lambda: any(m["rollout_replicas"] == 2 for m in main_steps(client, job.id).values()),
                 "a step on 2 replicas")
            extra.send_signal(signal.SIGTERM)
            assert extra.wait(timeout=60) == 0
            state = next(m.state for m in client.members()[0] if m.address == member.address)
            assert state in ("draining", "drained")
            wait(lambda: next(m.state for m in client.members()[0] if m.address == member.address) == "drained",
                 "the coordinator to let it go")
            assert member.metrics_address not in open(c.cfg.coordinator.targets_file).read()
            after = client.get(job.id).step
            wait(lambda: client.get(job.id).step >= after + 3, "3 more steps without it")
        finally:
            if extra.poll() is None:
                extra.kill()
        client.cancel(job.id)
        client.wait(job.id, timeout_s=60)
        steps = main_steps(client, job.id)
    assert all(m["samples"] == PROMPTS * GROUP for m in steps.values())
    assert steps[max(steps)]["rollout_replicas"] == 1
    assert "is leaving" in (tmp_path / "extra.log").read_text()  # it said so before it stopped

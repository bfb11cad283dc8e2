"""The fault suite: SIGKILL of every kind of member — each rollout, reward and reference replica, the trainer and
the coordinator — at random moments of a running GRPO job, 20 kills in one run, with the launcher's supervision
restarting each (as ``alignmesh up`` does). The job completes by itself: every step trained once, with its exact
sample count, and the trainer's step counter says no step was applied twice."""

from __future__ import annotations

import random
import signal
import threading
import time

import grpc
import pytest

from alignmesh.clients.client import Client
from alignmesh.deploy.local import health_ok
from alignmesh.deploy.supervise import Supervisor
from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.protos.reference.v1 import reference_pb2_grpc
from alignmesh.protos.rollout.v1 import rollout_pb2_grpc
from alignmesh.protos.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from test_jobs import main_steps, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.faults]
STEPS, PROMPTS, GROUP = 250, 16, 4
JOB = f"""
steps: {STEPS}
seed: 5
params: {{prompts_per_step: {PROMPTS}, group_size: {GROUP}, learning_rate: 1.0e-4, kl_coef: 0.01}}
eval: {{every: 100000, size: 50}}
sync: {{bucket_mb: 1, timeout_s: 10}}
reward_fn: digits
checkpoint_every: 4
"""
REPLICAS = [(role, r) for role in ("rollout", "reward", "reference") for r in (0, 1)]
STUBS = {"rollout": rollout_pb2_grpc.RolloutServiceStub, "reference": reference_pb2_grpc.ReferenceServiceStub}


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("faults"), tiny_model_dir, rollout={"replicas": 2},
                      reward={"replicas": 2}, reference={"replicas": 2},
                      coordinator={"trainer_recovery_s": 120})
    said: list[str] = []
    supervisor = Supervisor(c, max_restarts=10, window_s=600, backoff_s=0.2, say=said.append)
    thread = threading.Thread(target=supervisor.run, kwargs={"poll_s": 0.1}, daemon=True)
    thread.start()
    yield c, supervisor, said
    supervisor.stopped.set()
    thread.join(10)
    c.stop()


def address(cluster, role: str, replica: int = 0) -> str:
    return next(cluster.address(m) for m in cluster.members if m.role == role and m.replica == replica)


def serves_weights(cluster, role: str, replica: int) -> bool:
    """Up, and (rollout, reference) holding pushed weights: re-admitted by the coordinator, not just restarted."""
    addr = address(cluster, role, replica)
    if not health_ok(addr):
        return False
    if role not in STUBS:
        return True
    try:
        with grpc.insecure_channel(addr) as ch:
            return STUBS[role](ch).GetWeightVersion(weights_pb2.GetWeightVersionRequest(), timeout=2).version > 0
    except grpc.RpcError:
        return False


def job_step(cluster, job_id: str) -> int:
    try:
        with Client(cluster.coordinator_address(), timeout_s=2) as client:
            return client.get(job_id).step
    except Exception:  # the coordinator is down or starting
        return -1


def wait(predicate, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def schedule(rng: random.Random) -> list[tuple[str, int]]:
    """20 kills: every replica twice, the trainer and the coordinator four times each, in random order."""
    victims = REPLICAS * 2 + [("trainer", 0)] * 4 + [("coordinator", 0)] * 4
    rng.shuffle(victims)
    return victims


def test_twenty_kills_of_every_role_and_the_job_completes_exactly(cluster):
    c, supervisor, said = cluster
    rng = random.Random(11)
    with Client(c.coordinator_address()) as client:
        job = client.submit(JOB, name="faults")
    wait(lambda: job_step(c, job.id) >= 3, "the job's first steps")
    kills = []
    for role, replica in schedule(rng):
        sibling = (role, 1 - replica)
        if role in ("rollout", "reward", "reference"):  # one replica of a role down at a time
            wait(lambda: serves_weights(c, *sibling), f"{sibling} back in service")
        wait(lambda: health_ok(address(c, role, replica)), f"{role}-{replica} up again before its next kill")
        at = job_step(c, job.id)
        time.sleep(rng.uniform(0.1, 1.5))  # a random phase of the step in flight
        assert job_step(c, job.id) < STEPS, f"the job finished after {len(kills)} kills; make it longer"
        victim = c.process(role, replica)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        kills.append((role, replica, at))
        if role in ("trainer", "coordinator"):  # the job must make progress again before the next kill
            wait(lambda: job_step(c, job.id) > max(at, 0) + 1, f"the job to move on after killing the {role}")
    print(f"20 kills done at step {job_step(c, job.id)} of {STEPS}")
    assert len(kills) == 20 and {k[:2] for k in kills} == set(REPLICAS) | {("trainer", 0), ("coordinator", 0)}
    wait(lambda: job_step(c, job.id) >= STEPS and health_ok(c.coordinator_address()), "the job to finish", 600)
    with Client(c.coordinator_address()) as client:
        done = client.wait(job.id, timeout_s=120)
        assert done.state == "succeeded", done.error
        steps = main_steps(client, job.id)
        log = [e.message for e in client.events(job.id) if e.kind == "log"]
    assert sorted(steps) == list(range(1, STEPS + 1))
    assert all(m["samples"] == PROMPTS * GROUP for m in steps.values())  # none lost or doubled
    assert sum("trainer is back" in m for m in log) >= 1 and sum("resumed from checkpoint" in m for m in log) >= 4
    trained = sum(1 for m in steps.values() if m["informative_groups"] > 0)
    with grpc.insecure_channel(address(c, "trainer")) as ch:
        state = trainer_pb2_grpc.TrainerServiceStub(ch).GetState(trainer_pb2.GetStateRequest(), timeout=10)
    assert state.step == trained  # every trained step applied exactly once in the surviving history
    assert supervisor.restarts >= 20, said

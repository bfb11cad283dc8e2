"""Weight pushes that lose a rollout replica, against a real trainer and two real rollout processes, this test
driving the coordinator's WeightSync. The replica is SIGKILLed at a chosen phase of the push."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from alignmesh.coordinator.handles import RolloutPool, TrainerHandle, endpoints
from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.protos.rollout.v1 import rollout_pb2_grpc
from alignmesh.protos.trainer.v1 import trainer_pb2_grpc
from alignmesh.coordinator.weights import WeightSync
from alignmesh.services.common.settings import SecurityConfig

from helpers import cluster_yaml, serve

pytestmark = pytest.mark.integration
TIMEOUT_S = 10.0


@pytest.fixture
def services(tiny_model_dir, tmp_path):
    cfg = cluster_yaml(tmp_path, tiny_model_dir)
    procs = {}
    try:
        for name in ("trainer", "rollout-0", "rollout-1"):
            procs[name] = serve(name.split("-")[0], cfg, tmp_path / f"{name}.log")
        yield procs
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


class KillDuringCommit(WeightSync):
    """Kills one receiver's process after every receiver has staged the version and before any commits it."""

    def __init__(self, *args, victim, **kwargs):
        super().__init__(*args, **kwargs)
        self.victim = victim

    async def _commit(self, name, receivers, sent, deadline):
        if self.victim.poll() is None:
            self.victim.send_signal(signal.SIGKILL)
            self.victim.wait(10)
        await super()._commit(name, receivers, sent, deadline)


async def _versions(pool) -> list[int]:
    out = []
    for ep in pool.eps:
        if not ep.healthy:
            out.append(-1)
            continue
        out.append((await ep.stub.GetWeightVersion(weights_pb2.GetWeightVersionRequest(), timeout=5)).version)
    return out


def test_replica_lost_between_stage_and_commit_leaves_the_survivor_serving_the_version(services):
    """Replica 1 dies after both replicas staged version 1: replica 0 has committed it and refuses it a second
    time, so the push must end with replica 0 at version 1 and replica 1 marked down — not fail the step — and
    the next push goes to replica 0 alone without waiting out the dead peer's collective timeout."""
    async def run():
        rollout = RolloutPool(endpoints("rollout", [services["rollout-0"][1], services["rollout-1"][1]],
                                        SecurityConfig(), rollout_pb2_grpc.RolloutServiceStub), 30.0, pad_id=0)
        trainer = TrainerHandle(endpoints("trainer", [services["trainer"][1]], SecurityConfig(),
                                          trainer_pb2_grpc.TrainerServiceStub), 30.0)
        sync = KillDuringCommit(trainer, "127.0.0.1", 256 * 1024, TIMEOUT_S, victim=services["rollout-1"][0])
        try:
            first = await sync.push("rollout", rollout, 1)
            after_first = await _versions(rollout)
            start = time.monotonic()
            second = await sync.push("rollout", rollout, 2)
            return first, after_first, second, time.monotonic() - start, await _versions(rollout)
        finally:
            await rollout.close()
            await trainer.close()

    first, after_first, second, second_s, after_second = asyncio.run(run())
    assert first.version == 1 and first.receivers == 1 and first.bytes > 2_000_000 and first.buckets > 1
    assert after_first == [1, -1]  # replica 0 serves version 1; replica 1 is marked down
    assert second.version == 2 and second.receivers == 1 and second.bytes == first.bytes
    assert after_second == [2, -1]
    assert second_s < TIMEOUT_S  # a fresh group without the dead replica, not a collective timeout

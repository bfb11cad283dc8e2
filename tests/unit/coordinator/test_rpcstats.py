"""The experience-transfer ledger against a real reward server on loopback whose rule takes a known time."""

import asyncio
import time

import pytest

from alignmesh.coordinator.handles import RewardPool, endpoints
from alignmesh.coordinator.rpcstats import RpcLedger, handler_seconds
from alignmesh.protos.reward.v1 import reward_pb2_grpc
from alignmesh.services.common.server import ServeSpec, build_server
from alignmesh.services.common.settings import SecurityConfig
from alignmesh.services.reward.registry import Registry, RuleScorer
from alignmesh.services.reward.servicer import RewardServicer, add_to_server


def slow_length(prompt, completion, metadata):
    time.sleep(0.05)
    return float(len(completion))


def test_ledger_sums_per_role_and_never_counts_negative_transfer():
    led = RpcLedger()
    led.record("reward", 100, 20, wall_s=0.010, handler_s=0.004)
    led.record("reward", 50, 10, wall_s=0.002, handler_s=0.003)  # clock skew: handler capped at wall
    led.record("rollout", 7, 3, wall_s=0.5, handler_s=0.25)
    m = led.metrics()
    assert m["rpc_bytes_reward"] == 180 and m["rpc_bytes_rollout"] == 10 and m["rpc_bytes"] == 190
    assert m["rpc_ms_reward"] == pytest.approx(6.0) and m["rpc_ms_rollout"] == pytest.approx(250.0)
    assert m["rpc_ms"] == pytest.approx(256.0) and m["rpc_calls"] == 3
    led.reset()
    assert led.metrics() == {"rpc_bytes": 0.0, "rpc_ms": 0.0, "rpc_calls": 0.0}
    assert handler_seconds([("alignmesh-handler-us", "2500")]) == 0.0025
    assert handler_seconds([("other", "1")]) == 0.0


def test_pool_records_payload_bytes_and_subtracts_the_servers_handler_time():
    async def main():
        registry = Registry("addition_exact")
        registry.add("slow_length", RuleScorer("slow_length", slow_length))
        server = build_server(ServeSpec("reward", "127.0.0.1", 0, 0, SecurityConfig()))
        add_to_server(RewardServicer(registry), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        pool = RewardPool(endpoints("reward", [f"127.0.0.1:{port}"], SecurityConfig(),
                                    reward_pb2_grpc.RewardServiceStub), timeout_s=10)
        try:
            items = [("1+1=", "x" * k, {}) for k in range(4)]
            await pool.score(items, "slow_length")  # warm the channel
            pool.ledger.reset()
            start = time.perf_counter()
            scores = await pool.score(items, "slow_length")
            wall = time.perf_counter() - start
        finally:
            await pool.close()
            await server.stop(0)
        return scores.tolist(), pool.ledger.roles["reward"], wall

    scores, tally, wall = asyncio.run(main())
    assert scores == [0.0, 1.0, 2.0, 3.0]
    assert tally.calls == 1 and tally.bytes_out > 4 * len("1+1=") and tally.bytes_in >= 4 * 4
    assert tally.handler_s >= 4 * 0.05 - 1e-3  # four rule calls of 50 ms on the server
    assert tally.wall_s <= wall and tally.transfer_s < tally.wall_s - 0.19

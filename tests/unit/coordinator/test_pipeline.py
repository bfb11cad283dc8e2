"""The experience producer's staleness bound, with and without a warm-up of steps collected in turn."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from alignmesh.coordinator.flows.pipeline import Ahead


def run_pipeline(first: int, last: int, k: int, warmup: int) -> dict[int, int]:
    """Train steps first..last through an ``Ahead``; for each step, how many steps ahead of the last trained one
    its collection started (0: in turn, right after the step before it was trained)."""

    async def main() -> dict[int, int]:
        running = asyncio.Event()
        running.set()
        control = SimpleNamespace(running=running, cancel=asyncio.Event())
        trained = {"last": first - 1}
        ahead_by: dict[int, int] = {}

        async def collect(step: int) -> int:
            ahead_by[step] = step - 1 - trained["last"]
            await asyncio.sleep(0)
            return step * 10

        producer = Ahead(collect, first, last, k, control, lambda: 0, warmup)
        try:
            for step in range(first, last + 1):
                got = await asyncio.wait_for(producer.get(step), timeout=5)
                assert got.item == step * 10
                for _ in range(5):  # training: the producer gets the loop meanwhile
                    await asyncio.sleep(0)
                trained["last"] = step
                producer.done(step)
        finally:
            await producer.close()
        return ahead_by

    return asyncio.run(main())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_without_warmup_collection_runs_up_to_k_steps_ahead(k):
    ahead_by = run_pipeline(1, 12, k, warmup=0)
    assert sorted(ahead_by) == list(range(1, 13))
    assert max(ahead_by.values()) == k and min(ahead_by.values()) >= 0


@pytest.mark.parametrize("k", [1, 2])
def test_warmup_steps_are_collected_in_turn_then_the_pipeline_opens(k):
    ahead_by = run_pipeline(1, 12, k, warmup=4)
    assert [ahead_by[s] for s in range(1, 5)] == [0, 0, 0, 0]  # steps 1..4: after the step before was trained
    assert max(ahead_by[s] for s in range(5, 13)) == k  # then up to k ahead
    assert all(0 <= ahead_by[s] <= k for s in range(5, 13))


def test_a_resumed_run_past_the_warmup_runs_ahead_at_once():
    ahead_by = run_pipeline(31, 36, 2, warmup=25)  # a coordinator resumed at step 30 of a run with warmup 25
    assert ahead_by[32] == 1 and max(ahead_by.values()) == 2

"""The coordinator's autoscaling signal: the share of a step the trainer waited for experience."""

from __future__ import annotations

import pytest

from alignmesh.coordinator import metrics


def test_rollout_time_share_from_the_wait_phase_or_generate_plus_reward():
    metrics.observe_step("main", {"time_step": 0.4, "time_wait": 0.3, "time_generate": 0.35, "rollout_replicas": 2})
    assert metrics.ROLLOUT_SHARE._value.get() == pytest.approx(0.75)  # asynchronous: the wait is what it cost
    assert metrics.ROLLOUT_REPLICAS._value.get() == 2
    metrics.observe_step("main", {"time_step": 0.5, "time_generate": 0.1, "time_reward": 0.05})
    assert metrics.ROLLOUT_SHARE._value.get() == pytest.approx(0.3)  # synchronous: generation and scoring

"""Staleness-aware step size: eta / max(1, lag), by hand."""

from __future__ import annotations

import pytest

from alignmesh.coordinator.algos.staleness import staleness_scaled_lr


@pytest.mark.parametrize("lag, expected", [
    (0.0, 1e-4),    # synchronous: unchanged
    (0.92, 1e-4),   # up to one version behind: unchanged
    (1.0, 1e-4),
    (2.0, 5e-5),    # two versions: half a step
    (1.84, 1e-4 / 1.84),
    (4.0, 2.5e-5),
])
def test_the_step_is_divided_by_the_lag_beyond_one(lag, expected):
    assert staleness_scaled_lr(1e-4, lag) == pytest.approx(expected, rel=1e-12)


def test_a_negative_lag_is_refused():
    with pytest.raises(ValueError, match="lag must be >= 0"):
        staleness_scaled_lr(1e-4, -0.5)

"""The core split by ``cpu_plan``: phases in turn give each phase every core; overlapped roles share them."""

import pytest

from alignmesh.deploy.serve import default_threads
from alignmesh.services.common import threads
from alignmesh.services.common.errors import ConfigError
from alignmesh.services.common.settings import ClusterConfig


def plan(cores: int, cpu_plan: str, rollouts: int, monkeypatch) -> dict[str, int]:
    monkeypatch.setattr(threads, "cpu_count", lambda: cores)
    cfg = ClusterConfig(cpu_plan=cpu_plan)
    cfg.rollout.replicas = rollouts
    return {role: default_threads(cfg, role) for role in ("trainer", "rollout", "reference", "reward", "coordinator")}


def test_phased_gives_every_phase_all_cores(monkeypatch):
    assert plan(2, "phased", 2, monkeypatch) == {"trainer": 2, "rollout": 1, "reference": 2, "reward": 1,
                                                 "coordinator": 1}


def test_overlapped_splits_cores_between_training_and_collecting(monkeypatch):
    assert plan(2, "overlapped", 1, monkeypatch) == {"trainer": 1, "rollout": 1, "reference": 1, "reward": 1,
                                                     "coordinator": 1}
    assert plan(16, "overlapped", 3, monkeypatch)["trainer"] == 8
    assert plan(16, "overlapped", 3, monkeypatch)["rollout"] == 2  # 8 cores over 3 replicas + the reference


def test_unknown_plan_is_refused_by_name():
    with pytest.raises(ConfigError, match="cpu_plan"):
        ClusterConfig(cpu_plan="fast").validate("")

"""Cluster config checks added with elastic replicas and mixed precision: each error names the field and the fix."""

from __future__ import annotations

import pytest

from alignmesh.services.common.config import from_dict
from alignmesh.services.common.errors import ConfigError
from alignmesh.services.common.settings import ClusterConfig


@pytest.mark.parametrize("data, message", [
    ({"rollout": {"dtype": "bf16"}}, "rollout.dtype: must be one of float32, bfloat16, float16, got 'bf16'"),
    ({"trainer": {"dtype": "float16", "backend": "deepspeed"}}, "trainer.dtype: the deepspeed backend trains in "
                                                                "float32 or bfloat16"),
    ({"trainer": {"dtype": "bfloat16", "backend": "megatron"}}, "trainer.dtype: the megatron backend trains in "
                                                                "float32 here"),
    ({"colocate": [["trainer"]]}, "colocate[0]: a group names at least two different roles"),
    ({"colocate": [["trainer", "reward"]]}, "colocate[0]: 'reward' cannot sleep"),
    ({"colocate": [["trainer", "rollout"]], "trainer": {"backend": "deepspeed"}},
     "colocate: the deepspeed trainer cannot sleep"),
    ({"endpoints": {"trainer": ["dns:///t:1"]}}, "endpoints.trainer: dns:///t:1: only rollout, reward and reference"),
    ({"endpoints": {"rollout": ["nohost"]}}, "endpoints.rollout: 'nohost' is not host:port"),
    ({"endpoints": {"rollouts": ["a:1"]}}, "endpoints.rollouts: not a role"),
    ({"local_sockets": "maybe"}, "local_sockets: must be true or false, got 'maybe'"),
])
def test_bad_cluster_configs_name_the_field(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(ClusterConfig, data, "")
    assert message in str(err.value)


def test_good_ones_load():
    cfg = from_dict(ClusterConfig, {"rollout": {"dtype": "bfloat16"}, "trainer": {"dtype": "bfloat16",
                                    "gradient_checkpointing": True},
                                    "endpoints": {"rollout": ["dns:///rollout-headless:50051", "10.0.0.2:50051"]}}, "")
    assert cfg.rollout.dtype == "bfloat16" and cfg.trainer.gradient_checkpointing
    assert cfg.local_sockets and not from_dict(ClusterConfig, {"local_sockets": False}, "").local_sockets

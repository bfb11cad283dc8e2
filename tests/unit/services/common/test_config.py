import pytest

from alignmesh.services.common.errors import ConfigError
from alignmesh.services.common.settings import ClusterConfig, load_cluster_config


def write(tmp_path, text):
    p = tmp_path / "cluster.yaml"
    p.write_text(text)
    return p


def test_defaults_and_nested_values(tmp_path):
    cfg = load_cluster_config(write(tmp_path, "rollout:\n  replicas: 3\ntrainer:\n  learning_rate: 2e-4\n"))
    assert cfg.rollout.replicas == 3 and cfg.trainer.learning_rate == 2e-4 and cfg.reward.replicas == 1


def test_unknown_key_is_named_with_its_path(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'rollout.replica' \(known keys: backend, device, kv_cache_gb, max_batch_size"):
        load_cluster_config(write(tmp_path, "rollout:\n  replica: 2\n"))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match="rollout.replicas: must be an integer, got 'two'"):
        load_cluster_config(write(tmp_path, "rollout:\n  replicas: two\n"))


def test_malformed_yaml_gives_line(tmp_path):
    with pytest.raises(ConfigError, match=r"cluster.yaml: line \d+ column \d+ malformed YAML"):
        load_cluster_config(write(tmp_path, "rollout:\n  replicas: [1, 2\n"))


def test_invalid_values_say_why(tmp_path):
    with pytest.raises(ConfigError, match="rollout.replicas: must be > 0, got 0"):
        load_cluster_config(write(tmp_path, "rollout:\n  replicas: 0\n"))
    with pytest.raises(ConfigError, match=r"trainer.betas: must be two numbers in \[0, 1\)"):
        load_cluster_config(write(tmp_path, "trainer:\n  betas: [0.9]\n"))


def test_missing_model_path_is_named(tmp_path):
    cfg = ClusterConfig(model=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"model: .*nope is not a model directory"):
        cfg.model_path()


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_cluster_config("/nonexistent/cluster.yaml")


def test_every_example_cluster_config_loads():
    from pathlib import Path

    from alignmesh.services.common.settings import load_cluster_config

    examples = Path(__file__).resolve().parents[4] / "examples"
    clusters = sorted(examples.glob("cluster*.yaml"))
    assert len(clusters) >= 4
    backends = {(c.trainer.backend, c.rollout.backend) for c in map(load_cluster_config, clusters)}
    assert {("deepspeed", "hf"), ("megatron", "hf"), ("deepspeed", "vllm")} <= backends

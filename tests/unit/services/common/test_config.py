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
    with pytest.raises(ConfigError, match=r"unknown key 'rollout.replica' \(known keys: backend, device, dtype, kv_cache_gb, max_batch_size"):
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


def test_an_alias_bomb_is_refused_before_it_expands():
    """A 1 KB "billion laughs" document: with aliases it would expand to 10^9 list items (and error messages
    quoting the value would print them); aliases are refused at parse time, with the line."""
    from alignmesh.coordinator.config import parse_job_config

    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    lines.append("steps: *i")
    text = "\n".join(lines) + "\n"
    assert len(text) < 1024
    with pytest.raises(ConfigError, match=r"line 2 column \d+ malformed YAML: aliases \(\*name\) are not accepted"):
        parse_job_config(text)


def test_huge_configs_and_long_values_are_cut_short(tmp_path):
    from alignmesh.services.common.config import MAX_CONFIG_BYTES, parse_yaml

    with pytest.raises(ConfigError, match=f"at most {MAX_CONFIG_BYTES}"):
        parse_yaml("a: 1\n" * (MAX_CONFIG_BYTES // 4))
    with pytest.raises(ConfigError) as err:
        load_cluster_config(write(tmp_path, f"rollout:\n  replicas: '{'9' * 5000}x'\n"))
    assert len(str(err.value)) < 200 and "(5003 characters)" in str(err.value)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "'nan'"])
def test_non_finite_numbers_are_refused_by_name(tmp_path, value):
    with pytest.raises(ConfigError, match="trainer.learning_rate: must be a finite number"):
        load_cluster_config(write(tmp_path, f"trainer:\n  learning_rate: {value}\n"))


def test_a_cuda_trainer_with_a_cpu_reference_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"reference.device: cpu cannot join a weight-sync group with the trainer "
                                          r"on cuda"):
        load_cluster_config(write(tmp_path, "trainer:\n  device: cuda\nrollout:\n  device: cuda:1\n"))
    cfg = load_cluster_config(write(tmp_path, "trainer:\n  device: cuda\nrollout:\n  device: cuda:1\n"
                                              "reference:\n  device: cuda:2\n"))
    assert cfg.reference.device == "cuda:2"

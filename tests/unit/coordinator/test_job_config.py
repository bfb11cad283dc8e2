from pathlib import Path

import pytest

from alignmesh.coordinator.jobs import validate
from alignmesh.services.common.errors import ConfigError, PermissionDenied
from alignmesh.services.common.settings import ClusterConfig

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
CLUSTER = ClusterConfig()


@pytest.mark.parametrize("text, message", [
    ("algorithm: sarsa\n", r"algorithm: unknown algorithm 'sarsa'"),
    ("params:\n  learning_rate: -1\n", r"params: prompts_per_step >= 1, learning_rate > 0"),
    ("params:\n  group_size: 1\n", r"params.group_size: must be >= 2"),
    ("params:\n  group_sise: 4\n", r"unknown key 'params.group_sise'"),
    ("warm_start:\n  learning_rate: 0\n", r"warm_start.learning_rate: must be > 0"),
    ("steps: -3\n", r"steps: must be >= 0"),
    ("sync:\n  backend: mpi\n", r"sync.backend: must be auto, gloo or nccl"),
    (f"algorithm: {EXAMPLES}/flows/nope.py:MyFlow\n", r"algorithm: '.*/flows/nope.py:MyFlow' cannot be loaded"),
    # every flow checks its params at submit (sft eval_every 0 used to divide by zero mid-run)
    ("algorithm: sft\nparams: {eval_every: 0}\n", r"params.eval_every: must be > 0, got 0"),
    ("params: {dynamic_sampling: 1000}\n", r"params.dynamic_sampling: must be in \[0, 16\]"),
    ("params: {off_policy: vtrace}\n", r"params.off_policy: must be one of"),
    ("params: {clip_eps_high: -1}\n", r"params.clip_eps_high: must be in"),
    ("max_staleness: 17\n", r"max_staleness: must be in \[0, 16\]"),
    ("staleness_warmup: -1\n", r"staleness_warmup: must be >= 0"),
    ("staleness_lr: maybe\n", r"staleness_lr: must be true or false"),
    ("algorithm: rloo\nparams: {samples_per_prompt: 1}\n", r"params.samples_per_prompt: must be >= 2"),
    ("algorithm: dpo\nparams: {variant: hinge}\n", r"params.variant: must be one of \['sigmoid', 'ipo'\]"),
    ("algorithm: online_dpo\nparams: {beta: 0}\n", r"params.beta: must be > 0"),
    ("algorithm: ppo\nparams: {gamma: 1.5}\n", r"params.gamma: must be in \[0.0, 1.0\]"),
    ("algorithm: reinforce_pp\nparams: {learning_rate: .nan}\n", r"params.learning_rate: must be a finite"),
    ("algorithm: reward_model\nparams: {negatives: far}\n", r"params.negatives: must be one of"),
])
def test_invalid_job_configs_name_the_field(text, message):
    with pytest.raises(ConfigError, match=message):
        validate(text, CLUSTER)


def test_every_example_job_validates(monkeypatch, tiny_model_dir):
    """Every example, completely (flow params, paths, packages); an example's `init: /models/policy` (a model the
    operator mounts) is pointed at a local model directory here."""
    import dataclasses

    monkeypatch.chdir(EXAMPLES.parent)  # relative paths in the examples are from the repository root
    cluster = dataclasses.replace(CLUSTER, security=dataclasses.replace(
        CLUSTER.security, path_roots=[str(tiny_model_dir.parent), str(EXAMPLES)]),
        endpoints={"environment": ["127.0.0.1:1"]})  # agent examples need an environment service
    jobs = [p for p in EXAMPLES.glob("*.yaml") if not p.name.startswith("cluster")]
    assert len(jobs) >= 10
    for p in jobs:
        validate(p.read_text().replace("init: /models/policy", f"init: {tiny_model_dir}"), cluster)


FLOW = ("from dataclasses import dataclass\nfrom pathlib import Path\n"
        "Path(__file__).with_name('imported').write_text('ran')\n"
        "@dataclass\nclass P:\n    k: int = 1\n"
        "class MyFlow:\n    Params = P\n    async def run(self, ctx):\n        pass\n")


def test_user_flow_by_file_path_from_an_allowed_directory(tmp_path):
    (tmp_path / "my_flow.py").write_text(FLOW)
    cluster = ClusterConfig()
    cluster.coordinator.flow_dirs = [str(tmp_path)]
    cfg = validate(f"algorithm: {tmp_path}/my_flow.py:MyFlow\nparams:\n  k: 3\n", cluster)
    assert cfg.params == {"k": 3} and (tmp_path / "imported").read_text() == "ran"


@pytest.mark.parametrize("where", ["outside", "dotdot", "symlink"])
def test_a_job_cannot_run_code_from_outside_the_allowed_places(tmp_path, where):
    """Refused before any import: the flow file's top level never runs, whatever path trick names it."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "evil.py").write_text(FLOW)
    name = {"outside": f"{outside}/evil.py", "dotdot": f"{allowed}/../outside/evil.py",
            "symlink": f"{allowed}/link.py"}[where]
    (allowed / "link.py").symlink_to(outside / "evil.py")
    cluster = ClusterConfig()
    cluster.coordinator.flow_dirs = [str(allowed)]
    with pytest.raises(PermissionDenied, match=r"outside the flow directories .*coordinator.flow_dirs"):
        validate(f"algorithm: {name}:MyFlow\n", cluster)
    with pytest.raises(PermissionDenied, match=r"module 'os' is not one this cluster allows .*flow_modules"):
        validate("algorithm: os:system\n", cluster)
    assert not (outside / "imported").exists()


def test_a_missing_dataset_file_is_named_and_one_outside_the_roots_is_not_even_looked_for(tmp_path):
    cluster = ClusterConfig()
    cluster.security.path_roots = [str(tmp_path)]
    with pytest.raises(ConfigError, match=f"dataset.train: file {tmp_path}/train.jsonl not found"):
        validate(f"dataset:\n  kind: jsonl\n  train: {tmp_path}/train.jsonl\n", cluster)
    with pytest.raises(PermissionDenied, match="dataset.train"):  # confinement first: existence is not revealed
        validate("dataset:\n  kind: jsonl\n  train: /nope/train.jsonl\n", cluster)

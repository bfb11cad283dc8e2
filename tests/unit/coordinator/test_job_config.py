from pathlib import Path

import pytest

from alignmesh.coordinator.jobs import validate
from alignmesh.services.common.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize("text, message", [
    ("algorithm: sarsa\n", r"algorithm: unknown algorithm 'sarsa'"),
    ("params:\n  learning_rate: -1\n", r"params: prompts_per_step >= 1, learning_rate > 0"),
    ("params:\n  group_size: 1\n", r"params.group_size: must be >= 2"),
    ("params:\n  group_sise: 4\n", r"unknown key 'params.group_sise'"),
    ("dataset:\n  kind: jsonl\n  train: /nope/train.jsonl\n", r"dataset.train: file /nope/train.jsonl not found"),
    ("warm_start:\n  learning_rate: 0\n", r"warm_start.learning_rate: must be > 0"),
    ("steps: -3\n", r"steps: must be >= 0"),
    ("sync:\n  backend: mpi\n", r"sync.backend: must be auto, gloo or nccl"),
    ("algorithm: /nope/flow.py:MyFlow\n", r"algorithm: '/nope/flow.py:MyFlow' cannot be loaded"),
])
def test_invalid_job_configs_name_the_field(text, message):
    with pytest.raises(ConfigError, match=message):
        validate(text)


def test_every_example_job_validates():
    jobs = [p for p in EXAMPLES.glob("*.yaml") if not p.name.startswith("cluster")]
    assert jobs
    for p in jobs:
        validate(p.read_text())


def test_user_flow_by_file_path(tmp_path):
    flow = tmp_path / "my_flow.py"
    flow.write_text("from dataclasses import dataclass\n@dataclass\nclass P:\n    k: int = 1\n"
                    "class MyFlow:\n    Params = P\n    async def run(self, ctx):\n        pass\n")
    cfg = validate(f"algorithm: {flow}:MyFlow\nparams:\n  k: 3\n")
    assert cfg.params == {"k": 3}

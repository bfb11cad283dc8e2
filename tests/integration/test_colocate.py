"""Colocated roles: trainer, rollout and reference share one device group and take turns with its memory. A GRPO job
runs through them, with every step putting the trainer to sleep while the rollout generates and the rollout (and
reference) to sleep while the trainer trains; each Sleep releases the process's resident memory (on CPU the
weights and optimizer state go to a private file), and the job still learns.

Margin as in test_grpo_learning.py: the same 500 held-out prompts before and after, binomial standard error at most
2.2 points per evaluation; +6 points is ~2 standard errors of the difference. Measured here: see the print.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignmesh.clients.client import Client
from alignmesh.deploy.local import LocalCluster
from alignmesh.services.common.settings import load_cluster_config

from helpers import cluster_yaml

pytestmark = pytest.mark.integration
MARGIN = 0.06

JOB = """
algorithm: grpo
seed: 0
steps: 60
params: {prompts_per_step: 32, group_size: 8, learning_rate: 1.0e-4, kl_coef: 0.04}
warm_start: {max_steps: 600, batch_size: 64, learning_rate: 1.0e-3, target_dev_accuracy: 0.3, eval_every: 10}
sampling: {temperature: 0.5, max_new_tokens: 4}
eval: {every: 30, size: 500}
sync: {bucket_mb: 1}
"""


def test_colocated_roles_take_turns_and_the_job_learns(tiny_model_dir, tmp_path):
    cfg = load_cluster_config(cluster_yaml(tmp_path, tiny_model_dir, colocate=[["trainer", "rollout", "reference"]]))
    with LocalCluster(cfg) as cluster, Client(cluster.coordinator_address()) as client:
        job = client.submit(JOB, name="colocated")
        events = list(client.watch(job.id))
        job = client.get(job.id)
        assert job.state == "succeeded", job.error
        refused = pytest.raises(Exception, match="colocated roles .* take turns")
        with refused:
            client.submit(JOB + "max_staleness: 1\n", name="async")
    steps = [e.metrics for e in events if e.kind == "step" and e.stage == "main"]
    assert len(steps) == 60
    weights = 527_488 * 4
    for m in steps:  # every step: the rollout and reference slept for the train step
        assert m["rollout_offloaded_bytes"] >= weights and m["reference_offloaded_bytes"] >= weights
        assert m["time_swap"] > 0
    # ... and the trainer for generation, except right after an evaluation (which generated with it asleep)
    trainer_slept = [m for m in steps if m.get("trainer_offloaded_bytes", 0) >= 3 * weights]  # + AdamW's moments
    assert len(trainer_slept) >= len(steps) - 2
    released = sum(m["trainer_resident_released_bytes"] for m in trainer_slept) / sum(
        m["trainer_offloaded_bytes"] for m in trainer_slept)
    summary = json.loads((Path(job.run_dir) / "summary.json").read_text())
    gain = summary["accuracy_after"] - summary["accuracy_before"]
    print(f"colocated: accuracy {summary['accuracy_before']:.3f} -> {summary['accuracy_after']:.3f}, trainer "
          f"resident memory released {released:.2f} of the bytes offloaded, swap "
          f"{sum(m['time_swap'] for m in steps) / len(steps) * 1000:.0f} ms/step of "
          f"{sum(m['time_step'] for m in steps) / len(steps) * 1000:.0f}")
    assert released >= 0.5
    assert gain >= MARGIN

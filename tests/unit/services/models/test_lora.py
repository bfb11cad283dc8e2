"""LoRA adapters on the policy: only adapters are trainable and moved by the channel; a peft adapter directory
round-trips; the base model's directory resets the adapters; other models and mismatched adapters are refused by
name; the merged export computes what the adapted model computes."""

from __future__ import annotations

import pytest
import torch

from alignmesh.services.common.config import from_dict
from alignmesh.services.common.errors import ConfigError, FailedPrecondition
from alignmesh.services.common.settings import ClusterConfig, LoraConfig
from alignmesh.services.models.loading import load_causal_lm
from alignmesh.services.models.logprobs import token_logprobs
from alignmesh.services.models.lora import adapter_weights_from, merged, read_adapter
from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.sender import named_weights

pytest.importorskip("peft")


def test_only_the_adapters_train_and_travel(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, lora=LoraConfig())
    moved = named_weights(model)
    assert moved and all(".lora_A." in n or ".lora_B." in n for n, _ in moved)
    assert sum(s.nbytes for s in bk.specs_of(moved)) == 188_416  # vs 2,109,952 for every weight
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) == 527_488  # the frozen base


def test_adapter_directories_round_trip_and_the_base_resets(tiny_model_dir, tmp_path):
    model = load_causal_lm(tiny_model_dir, lora=LoraConfig())
    initial = {n: t.clone() for n, t in named_weights(model)}
    with torch.no_grad():
        for _, p in named_weights(model):
            p.add_(0.01)
    model.save_pretrained(str(tmp_path / "adapter"))
    other = load_causal_lm(tiny_model_dir, lora=LoraConfig())
    got = read_adapter(other, tmp_path / "adapter")
    assert all(torch.equal(got[n], t) for n, t in named_weights(model))
    reset = adapter_weights_from(other, tiny_model_dir, tiny_model_dir, initial)
    assert all(torch.equal(reset[n], initial[n]) for n in initial)
    with pytest.raises(FailedPrecondition, match="with lora the base is the cluster's model"):
        adapter_weights_from(other, tmp_path, tiny_model_dir, initial)
    small = load_causal_lm(tiny_model_dir, lora=LoraConfig(r=4))
    with pytest.raises(FailedPrecondition, match="a different r"):
        read_adapter(small, tmp_path / "adapter")
    attention_only = load_causal_lm(tiny_model_dir, lora=LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(FailedPrecondition, match="not an adapter of this model's LoRA"):
        read_adapter(attention_only, tmp_path / "adapter")


def test_the_merged_export_computes_what_the_adapted_model_computes(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, lora=LoraConfig())
    with torch.no_grad():
        for _, p in named_weights(model):
            p.normal_(0, 0.05)
    ids = torch.randint(3, 20, (8, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        gap = (token_logprobs(merged(model), ids, mask) - token_logprobs(model, ids, mask)).abs().max()
    assert float(gap) < 1e-5


@pytest.mark.parametrize("data, message", [
    ({"lora": {"r": 0}}, "lora.r: must be > 0"),
    ({"lora": {"target_modules": []}}, "lora.target_modules: a non-empty list"),
    ({"lora": {}, "trainer": {"backend": "deepspeed"}}, "lora: LoRA trains with trainer.backend torch"),
])
def test_lora_settings_are_checked(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ClusterConfig, data, "")


def test_merged_weights_are_the_plain_models_with_the_adapters_in(tiny_model_dir):
    """What a vLLM replica receives under LoRA: the plain model's names and shapes, each adapted weight equal to
    peft's own merge, and the trainer's model untouched (no merge and unmerge drift)."""
    from transformers import AutoModelForCausalLM

    from alignmesh.services.models.lora import merged_weights

    model = load_causal_lm(tiny_model_dir, lora=LoraConfig())
    with torch.no_grad():
        for _, p in named_weights(model):
            p.normal_(0, 0.05)
    before = {n: p.clone() for n, p in model.named_parameters()}
    pushed = dict(merged_weights(model))
    plain = dict(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).named_parameters())
    assert list(pushed) == list(plain)
    assert all(pushed[n].shape == plain[n].shape for n in plain)
    reference = dict(merged(model).named_parameters())
    assert all(torch.allclose(pushed[n], reference[n], atol=1e-6) for n in plain)
    changed = [n for n in plain if not torch.equal(pushed[n], plain[n])]
    assert len(changed) == 7 * 2  # seven adapted projections in each of the two layers
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

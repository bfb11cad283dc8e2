"""The vLLM shim is still needed: after ``reload_weights`` a tied output layer on CPU keeps serving the old
weights until it is repacked. When the first assertion fails, vLLM repacks by itself: delete the shim."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="no vllm installed")]


def test_tied_output_layer_stays_stale_without_the_repack(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine and worker in this process
    import vllm

    from alignmesh.services.compat.vllm import TARGET_VERSION, refresh_tied_output
    from alignmesh.services.models.loading import load_causal_lm
    from alignmesh.services.models.logprobs import token_logprobs
    from alignmesh.services.rollout.vllm_backend import make_llm

    assert vllm.__version__.startswith(TARGET_VERSION), "re-check services/compat/vllm.py"
    llm = make_llm(str(tiny_model_dir), "cpu", 16, 1.0, 0)
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(-1.5)  # a big change to the tied weight only
    new = {n: p.detach().clone() for n, p in model.named_parameters()}
    seq = [1, 5, 6, 7, 8, 9, 10]
    want = token_logprobs(model, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))[0, 1:]

    def served() -> torch.Tensor:
        out = llm.generate([{"prompt_token_ids": seq}], vllm.SamplingParams(max_tokens=1, prompt_logprobs=0,
                                                                            detokenize=False), use_tqdm=False)[0]
        return torch.tensor([step[t].logprob for t, step in zip(seq[1:], out.prompt_logprobs[1:])])

    llm.collective_rpc(lambda worker: worker.model_runner.reload_weights(weights_iterator=iter(new.items())))
    llm.reset_prefix_cache()
    assert float((served() - want).abs().max()) > 1e-2  # stale: the shim is still needed
    llm.collective_rpc(lambda worker: refresh_tied_output(worker.model_runner.get_model()))
    llm.reset_prefix_cache()
    assert float((served() - want).abs().max()) <= 1e-5

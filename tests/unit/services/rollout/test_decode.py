"""The shared-prefix sampling loop (services/rollout/decode.py) draws exactly what transformers' ``generate`` draws
for the same seed and settings — every token and every log-probability — across model families, prompt lengths,
eos in mid-batch, greedy, temperature and top-p; and the rollout backend cuts after eos as before."""

from __future__ import annotations

import pytest
import torch

from alignmesh.services.models.loading import load_causal_lm
from alignmesh.services.models.tiny import create_model_dir
from alignmesh.services.rollout import decode
from alignmesh.services.rollout.backend import SamplingParams
from alignmesh.services.rollout.hf import HFRolloutBackend

PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 4, 4, 8, 3, 2, 6], [1, 12, 13]]
PAD = 0


def reference(model, prompts, n, new, temperature, top_p, eos, seed):
    """``generate`` on the same batch, as the rollout called it before the loop replaced it."""
    ids, mask = decode.left_padded(prompts, PAD)
    sample = temperature > 0
    extra = dict(temperature=temperature, top_p=top_p, top_k=0) if sample else {}
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=sample, max_new_tokens=new,
                         num_return_sequences=n, pad_token_id=PAD, eos_token_id=eos, output_logits=True,
                         return_dict_in_generate=True, use_cache=True, **extra)
    completion = out.sequences[:, ids.shape[1]:]
    logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), -1)
    return completion, logprobs.gather(-1, completion.unsqueeze(-1)).squeeze(-1)


def ours(model, prompts, n, new, temperature, top_p, eos, seed):
    chain = decode.warpers(temperature, top_p) if temperature > 0 else None
    torch.manual_seed(seed)
    return decode.sample(model, prompts, n, new, chain, PAD, eos)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    return {f: load_causal_lm(create_model_dir(root / f, seed=1, family=f, tie=tie, kv_heads=kv)).eval()
            for f, tie, kv in (("llama", False, 2), ("qwen2", True, 2), ("gemma", True, 1))}


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (0.9, 0.8), (0.0, 1.0)])
def test_the_same_tokens_and_logprobs_as_generate(families, family, temperature, top_p):
    model = families[family]
    n = 1 if temperature == 0 else 4
    eos = 6  # a frequent token of these random models: some rows end early, some run to the budget
    want_ids, want_lp = reference(model, PROMPTS, n, 6, temperature, top_p, eos, seed=3)
    got_ids, got_lp = ours(model, PROMPTS, n, 6, temperature, top_p, eos, seed=3)
    assert got_ids.shape == want_ids.shape == (len(PROMPTS) * n, want_ids.shape[1])
    assert torch.equal(got_ids, want_ids)
    live = torch.ones_like(got_ids, dtype=torch.bool)  # positions up to and including each row's eos
    live[:, 1:] = torch.cumsum(got_ids == eos, dim=1)[:, :-1] == 0
    assert torch.allclose(got_lp[live], want_lp[live], atol=1e-5)
    if temperature > 0:
        assert got_ids.unique().numel() > 3  # a draw, not a constant


def test_rows_that_all_end_stop_the_loop_and_the_backend_cuts_after_eos(tiny_model_dir):
    backend = HFRolloutBackend(str(tiny_model_dir))
    eos = int(ours(backend.model, [[1, 5]], 1, 1, 0.0, 1.0, -1, 0)[0][0, 0])  # the greedy first token
    backend.eos_id = eos
    ids, _ = ours(backend.model, [[1, 5], [1, 5]], 2, 8, 0.0, 1.0, eos, 0)
    assert ids.shape == (4, 1)  # every row ended at its first token: no more forwards
    g = backend.generate([[1, 5], [1, 7, 9]], SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=5))
    assert g.completion_lengths.min() < 8  # some rows ended early
    for row, logprobs, length in zip(g.completion_ids, g.logprobs, g.completion_lengths.tolist()):
        assert (row[length:] == backend.pad_id).all() and (logprobs[length:] == 0).all()
        assert row[length - 1] == eos or length == 8


def test_warpers_follow_the_settings():
    assert decode.warpers(1.0, 1.0) == []
    assert [type(w).__name__ for w in decode.warpers(0.5, 0.9)] == ["TemperatureLogitsWarper", "TopPLogitsWarper"]
    logits = torch.tensor([[0.0, 5.0, 1.0]])
    assert decode.pick(logits, None).tolist() == [1]
    torch.manual_seed(0)
    draws = torch.stack([decode.pick(logits, decode.warpers(1.0, 0.5)) for _ in range(50)])
    assert draws.unique().tolist() == [1]  # top-p 0.5 keeps only the most likely token here

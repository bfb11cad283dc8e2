"""Sampling ``n`` completions of each prompt with one prefill per prompt: its KV cache is shared by its samples.

transformers' ``generate(num_return_sequences=n)`` copies every prompt n times before the prefill, so a GRPO step
(n = 8-16 samples per prompt) computes each prompt's keys and values n times, and pays generate's per-token
bookkeeping (logits processors, stopping criteria, cache preparation) on top. Here the prompts are prefilled once,
the cache is repeated n times (``Cache.batch_repeat_interleave``), and each new token costs one forward of the
batch's last tokens. The samples are those ``generate`` draws — same logits warpers (transformers' own temperature
and top-p classes, in generate's order), same softmax and ``torch.multinomial`` calls on the same shapes in the
same order, so the same random stream — which ``tests/unit/services/rollout/test_decode.py`` holds token for token
against ``generate``. Only the job's sampling settings apply (a model's ``generation_config`` adds nothing: the
behaviour log-probabilities must describe the distribution the samples came from).
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from alignmesh.services.compat.transformers import cache_kwarg, returned_cache


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids and attention mask [B, W] of prompts padded on the left (a decoder-only batch)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def warpers(temperature: float, top_p: float) -> list:
    """generate's sampling warpers for these settings, in its order (top-k is off: the job never sets it)."""
    out = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p))
    return out


def pick(logits: torch.Tensor, chain: list | None) -> torch.Tensor:
    """The next token of each row from float32 ``logits`` [R, V]: argmax when ``chain`` is None (greedy), else a
    draw from the softmax of the warped logits."""
    if chain is None:
        return logits.argmax(-1)
    scores = logits
    for warp in chain:
        scores = warp(None, scores)
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)


@torch.no_grad()
def sample(model, prompts: list[list[int]], n: int, max_new_tokens: int, chain: list | None, pad_id: int,
           eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion ids and their log-probabilities under the unmodified model, both [B*n, L] on the CPU, row
    ``i * n + j`` the j-th sample of prompt i; after a row's eos its ids are ``pad_id`` (log-probabilities of the
    pads are computed but meaningless: the caller cuts at eos). L <= max_new_tokens: the loop stops when every
    row has ended."""
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_padded(prompts, pad_id))
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate derives them
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = returned_cache(out)
    cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)
    mask, position = mask.repeat_interleave(n, dim=0), positions[:, -1:].repeat_interleave(n, dim=0)
    ended = torch.zeros(len(prompts) * n, dtype=torch.bool, device=device)
    tokens, logprobs, key = [], [], cache_kwarg(model)
    for t in range(max_new_tokens):
        token = pick(logits, chain).masked_fill(ended, pad_id)
        tokens.append(token)
        logprobs.append(torch.log_softmax(logits, dim=-1).gather(-1, token.unsqueeze(-1)).squeeze(-1))
        ended |= token == eos_id
        if t == max_new_tokens - 1 or bool(ended.all()):
            break
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        position = position + 1
        out = model(input_ids=token.unsqueeze(-1), attention_mask=mask, position_ids=position, use_cache=True,
                    **{key: cache})
        logits = out.logits[:, -1].float()
    return torch.stack(tokens, dim=1).cpu(), torch.stack(logprobs, dim=1).cpu()

"""Per-token log-probabilities of given sequences: the one definition shared by reference, trainer and tests."""

from __future__ import annotations

import torch


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``out[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` for t >= 1; ``out[:, 0] = 0``.

    input_ids, attention_mask: [B, T] (right padded). Returns float32 [B, T]; padded positions are 0.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:] = picked * attention_mask[:, 1:].to(picked.dtype)
    return out

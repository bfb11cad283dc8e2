"""Per-token log-probabilities of given sequences: the one definition shared by reference, trainer and tests."""

from __future__ import annotations

import torch


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``out[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` for t >= 1; ``out[:, 0] = 0``.

    input_ids, attention_mask: [B, T] (right padded). Returns float32 [B, T]; padded positions are 0.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return _picked(logits[:, :-1], input_ids, attention_mask)


def _picked(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] log-probabilities of tokens 1..T-1 from the logits [B, T-1, V] that predict them; 0 at t = 0 and on
    padding."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:] = picked * attention_mask[:, 1:].to(picked.dtype)
    return out


def prompt_lengths(loss_mask: torch.Tensor) -> torch.Tensor:
    """[B] each row's leading positions outside the loss: the index of its first loss token (0 when none)."""
    return (loss_mask > 0).int().argmax(dim=1)


def prefix_runs(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Runs of consecutive rows with the same prompt (a GRPO group: its samples of one prompt).

    ``prompt_lengths`` [B]: each row's leading tokens outside the loss. A row joins the previous row's run when
    both prompts have the same length and tokens. Returns ``(run_of_row [B], shared [R])``: each run's shared
    length, its prompt length capped at its rows' lengths - 1 (one token of every row is left to the suffix).
    None when no run has two rows (nothing to share) or a row is shorter than 2 tokens.
    """
    lengths = attention_mask.sum(dim=1)
    if input_ids.shape[0] < 2 or int(lengths.min()) < 2:
        return None
    same = (input_ids[1:] == input_ids[:-1]) & (attention_mask[1:] > 0) & (attention_mask[:-1] > 0)
    common = torch.cumprod(same.long(), dim=1).sum(dim=1)  # [B-1]: leading tokens row b+1 shares with row b
    joins = (prompt_lengths[1:] == prompt_lengths[:-1]) & (common >= prompt_lengths[1:]) & (prompt_lengths[1:] > 0)
    if not bool(joins.any()):
        return None
    run_of_row = torch.cat([joins.new_zeros(1, dtype=torch.long), torch.cumsum((~joins).long(), dim=0)])
    runs = int(run_of_row[-1]) + 1
    shared = torch.full((runs,), int(lengths.max()), dtype=torch.long, device=input_ids.device)
    shared = shared.scatter_reduce(0, run_of_row, torch.minimum(lengths - 1, prompt_lengths.clamp(min=1)), "amin")
    return run_of_row, shared


def shared_prefix_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           prompt_lengths: torch.Tensor | None) -> torch.Tensor:
    """``token_logprobs`` — the same values up to float rounding, the same gradients — with the prompt that
    consecutive rows share (``prefix_runs``; none without ``prompt_lengths``) computed once per run: the run's
    prefix is one row of a first forward, its KV cache is gathered to every row of the run (differentiably: the
    rows' gradients sum into the shared keys and values), and each row's own suffix is a second forward over
    that cache. For GRPO's groups of G samples of one prompt this computes each prompt once instead of G times.
    Right-padded rows in, [B, T] out.
    """
    from alignmesh.services.compat.transformers import cache_kwarg, returned_cache

    runs = None if prompt_lengths is None else prefix_runs(input_ids, attention_mask, prompt_lengths)
    if runs is None:
        return token_logprobs(model, input_ids, attention_mask)
    run_of_row, shared = runs
    rows, width = input_ids.shape
    first = torch.searchsorted(run_of_row, torch.arange(len(shared), device=input_ids.device))
    wide = int(shared.max())
    start = wide - shared  # the prefixes are left-padded to ``wide``
    cols = torch.arange(wide, device=input_ids.device)
    prefix_mask = (cols.unsqueeze(0) >= start.unsqueeze(1)).long()
    prefix = input_ids[first].gather(1, (cols.unsqueeze(0) - start.unsqueeze(1)).clamp(min=0)) * prefix_mask
    positions = (prefix_mask.cumsum(-1) - 1).masked_fill(prefix_mask == 0, 1)
    head = model(input_ids=prefix, attention_mask=prefix_mask, position_ids=positions, use_cache=True)
    cache = returned_cache(head)
    cache.batch_select_indices(run_of_row)
    cut = shared[run_of_row]  # [B]: where each row's suffix starts
    lengths = attention_mask.sum(dim=1)
    span = int((lengths - cut).max())
    at = cut.unsqueeze(1) + torch.arange(span, device=input_ids.device).unsqueeze(0)  # [B, S]
    suffix_mask = (at < lengths.unsqueeze(1)).long()
    tail = model(input_ids=input_ids.gather(1, at.clamp(max=width - 1)) * suffix_mask,
                 attention_mask=torch.cat([prefix_mask[run_of_row], suffix_mask], dim=1), position_ids=at,
                 use_cache=True, **{cache_kwarg(model): cache})
    # the logits that predict token t (t >= 1) of row b: position t-1 of its run's prefix, or of its own suffix
    vocab = head.logits.shape[-1]
    table = torch.cat([head.logits.reshape(-1, vocab), tail.logits.reshape(-1, vocab)])
    before = torch.arange(width - 1, device=input_ids.device).unsqueeze(0)  # [1, T-1]
    in_prefix = before < cut.unsqueeze(1)
    run = run_of_row.unsqueeze(1)
    from_prefix = run * wide + start[run] + before
    from_suffix = head.logits.shape[0] * wide + torch.arange(rows, device=input_ids.device).unsqueeze(1) * span \
        + (before - cut.unsqueeze(1)).clamp(0, span - 1)
    return _picked(table[torch.where(in_prefix, from_prefix, from_suffix)], input_ids, attention_mask)

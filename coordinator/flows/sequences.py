"""Turning prompts and completions into training tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignmesh.services.models.logprobs import prompt_lengths


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor  # int64 [B, T], right padded
    attention_mask: torch.Tensor  # int64 [B, T]
    loss_mask: torch.Tensor  # float32 [B, T]: 1 on completion tokens
    behavior_logprobs: torch.Tensor | None = None  # float32 [B, T]: the rollout's own, where it sampled

    def prompt_lengths(self) -> torch.Tensor:
        """[B] each row's leading tokens outside the loss (``logprobs.prompt_lengths``)."""
        return prompt_lengths(self.loss_mask)

    def select(self, index: torch.Tensor) -> "SequenceBatch":
        behavior = None if self.behavior_logprobs is None else self.behavior_logprobs[index]
        return SequenceBatch(self.input_ids[index], self.attention_mask[index], self.loss_mask[index], behavior)


def build(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> SequenceBatch:
    """Concatenate prompt + completion per row; the loss mask covers the completion (eos included)."""
    rows = [p + c for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c, dtype=torch.int64)
        mask[i, :len(p) + len(c)] = 1
        loss_mask[i, len(p):len(p) + len(c)] = 1.0
    return SequenceBatch(ids, mask, loss_mask)


def concat(batches: list[SequenceBatch], pad_id: int) -> SequenceBatch:
    """Rows of several batches as one, right padded to the widest (pad id, attention 0, loss 0, log-probability 0)."""
    width = max(b.input_ids.shape[1] for b in batches)

    def widen(t: torch.Tensor, value) -> torch.Tensor:
        extra = width - t.shape[1]
        return torch.cat([t, torch.full((t.shape[0], extra), value, dtype=t.dtype)], 1) if extra else t

    behavior = None
    if all(b.behavior_logprobs is not None for b in batches):
        behavior = torch.cat([widen(b.behavior_logprobs, 0.0) for b in batches])
    return SequenceBatch(torch.cat([widen(b.input_ids, pad_id) for b in batches]),
                         torch.cat([widen(b.attention_mask, 0) for b in batches]),
                         torch.cat([widen(b.loss_mask, 0.0) for b in batches]), behavior)


def place(values: torch.Tensor, prompt_lengths: list[int], width: int) -> torch.Tensor:
    """Put completion-aligned values [B, L] at their token positions in a [B, width] sequence batch."""
    out = torch.zeros((values.shape[0], width), dtype=values.dtype)
    for i, start in enumerate(prompt_lengths):
        n = min(values.shape[1], width - start)
        out[i, start:start + n] = values[i, :n]
    return out


def take(values: torch.Tensor, prompt_lengths: list[int], length: int) -> torch.Tensor:
    """The inverse of ``place``: completion-aligned [B, length] from a [B, T] sequence batch."""
    out = torch.zeros((values.shape[0], length), dtype=values.dtype)
    for i, start in enumerate(prompt_lengths):
        n = min(length, values.shape[1] - start)
        out[i, :n] = values[i, start:start + n]
    return out

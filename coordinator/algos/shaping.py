"""Reward shaping of DAPO (Yu et al. 2025) as pure torch functions."""

from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache: int) -> torch.Tensor:
    """Soft overlong punishment (DAPO eq. 13), added to the task reward: with L = ``max_len``, C = ``cache``,

        R_length(y) = 0                        if |y| <= L - C
                    = ((L - C) - |y|) / C      if L - C < |y| <= L
                    = -1                       if |y| > L

    lengths: [N] completion lengths (int) -> [N] float penalties in [-1, 0].
    """
    if not 0 < cache <= max_len:
        raise ValueError(f"cache must be in (0, max_len], got {cache} with max_len {max_len}")
    n = lengths.to(torch.float32)
    soft = ((max_len - cache) - n) / cache
    return torch.where(n <= max_len - cache, torch.zeros_like(n), torch.where(n <= max_len, soft, -torch.ones_like(n)))


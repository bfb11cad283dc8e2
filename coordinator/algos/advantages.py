"""Advantage estimators as pure torch functions (tensors in, tensors out)."""

from __future__ import annotations

import torch


def group_normalized_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """GRPO outcome advantages (Shao et al. 2024, eq. 3): for prompt i and sample j of its group,

        A_ij = (r_ij - mean_j r_i) / (std_j r_i + eps)      (std unbiased; without ``scale``: r_ij - mean_j r_i)

    rewards: [P, G] -> advantages [P, G]. A group whose rewards are all equal gets all-zero advantages.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [P, G], got shape {list(rewards.shape)}")
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centered
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(rewards[:, :1])
    return centered / (std + eps)


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """[P, G] -> bool [P]: True where the group's rewards are not all equal (it carries a learning signal)."""
    return (rewards != rewards[:, :1]).any(dim=1)

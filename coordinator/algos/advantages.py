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


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each sample's baseline is the mean of the *other*
    samples of its prompt:  A_ij = r_ij - (1/(G-1)) sum_{k != j} r_ik.   rewards: [P, G] (G >= 2) -> [P, G]."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [P, G] with G >= 2, got shape {list(rewards.shape)}")
    g = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    return rewards - others


def reinforce_pp_advantages(rewards: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                            mask: torch.Tensor, kl_coef: float, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): token returns with a per-token KL penalty, whitened over the whole batch.

        k_t = logprobs_t - ref_logprobs_t                      (k1 estimate of the KL at token t)
        G_t = r - beta * sum_{t' >= t} k_t'                   (undiscounted return; r arrives at the last token)
        A   = (G - mean(G)) / (std(G) + eps)                   (mean and std over all masked tokens)

    rewards [B]; logprobs, ref_logprobs, mask [B, L] over completion tokens -> advantages [B, L] (0 off mask).
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    returns = rewards.unsqueeze(1) - kl_coef * torch.flip(torch.cumsum(torch.flip(kl, [1]), dim=1), [1])
    valid = mask > 0
    mean = returns[valid].mean()
    std = returns[valid].std() if valid.sum() > 1 else torch.zeros((), dtype=returns.dtype)
    return torch.where(valid, (returns - mean) / (std + eps), torch.zeros_like(returns))


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """RLHF token rewards (Ziegler et al. 2019): ``r_t = -beta (logprobs_t - ref_logprobs_t)``, plus the sequence
    score on the last completion token. scores [B]; the rest [B, L] -> [B, L] (0 off mask)."""
    mask = mask.to(logprobs.dtype)
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = (mask.cumsum(dim=1) == mask.sum(dim=1, keepdim=True)) & (mask > 0)
    return rewards + scores.unsqueeze(1) * last.to(logprobs.dtype)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95,
        dones: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over completion tokens:

        delta_t = r_t + gamma * V_{t+1} * (1 - done_t) - V_t
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},      returns_t = A_t + V_t

    rewards, values, mask: [B, L]; ``dones`` [B, L] marks tokens after which an episode ends (defaults to the
    last masked token of each row). Padding (mask 0) contributes nothing and gets 0. Returns (advantages, returns).
    """
    mask = mask.to(values.dtype)
    if dones is None:
        dones = ((mask.cumsum(dim=1) == mask.sum(dim=1, keepdim=True)) & (mask > 0)).to(values.dtype)
    dones = dones.to(values.dtype)
    adv = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        cont = 1.0 - dones[:, t]
        delta = rewards[:, t] + gamma * next_value * cont - values[:, t]
        a = delta + gamma * lam * cont * next_adv
        adv[:, t] = a * mask[:, t]
        keep = mask[:, t] > 0  # padding passes the later (empty) state through unchanged
        next_value = torch.where(keep, values[:, t], next_value)
        next_adv = torch.where(keep, a, next_adv)
    return adv, (adv + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked entries; 0 elsewhere."""
    valid = mask > 0
    mean, std = x[valid].mean(), x[valid].std() if valid.sum() > 1 else torch.ones(())
    return torch.where(valid, (x - mean) / (std + eps), torch.zeros_like(x))


def adaptive_kl_coef(coef: float, observed_kl: float, target: float, horizon: float, steps: int = 1) -> float:
    """Adaptive KL controller (Ziegler et al. 2019): ``beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / H``."""
    error = max(-0.2, min(0.2, observed_kl / target - 1.0))
    return coef * (1.0 + error * steps / horizon)

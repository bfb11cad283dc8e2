"""Losses as pure torch functions (tensors in, tensors out; no I/O, no config objects), and the loss registry.

Shapes: B sequences, T positions. ``logprobs[b, t] = log pi(x_t | x_<t)``; ``mask[b, t] = 1`` where the token at
t is trained on. Every token loss is a token sum divided by ``normalizer`` (default: ``mask.sum()``), so a batch
split into micro-batches that share the full batch's normalizer gives the same gradient as the whole batch.

The registry (``LOSSES``, at the end) names each loss's *objective*: a few lines that pick its inputs out of the
experience and its knobs out of the ``LossSpec`` and call the pure function. Adding a loss is one objective and
one ``LOSSES.register`` line; the trainer's step loop (``step.py``) and every engine then run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from alignmesh.services.common.registry import Registry

if TYPE_CHECKING:
    from alignmesh.services.trainer.backend import Experience, LossSpec


def _norm(mask: torch.Tensor, normalizer: float | torch.Tensor | None) -> torch.Tensor:
    n = mask.sum() if normalizer is None else torch.as_tensor(normalizer, dtype=mask.dtype)
    return n.clamp(min=1.0)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman, 2020): ``exp(r - l) - (r - l) - 1 >= 0``.

    logprobs, ref_logprobs: [B, T] -> [B, T].
    """
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def policy_gradient_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                         mask: torch.Tensor, clip_eps: float, ref_logprobs: torch.Tensor | None = None,
                         kl_coef: float = 0.0, normalizer: float | torch.Tensor | None = None,
                         weights: torch.Tensor | None = None, clip_eps_high: float | None = None,
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (PPO, Schulman et al. 2017) with the GRPO KL term (Shao et al. 2024):

        rho_bt = exp(logprobs - old_logprobs)
        L = -(1/N) sum_bt mask_bt [ w_bt min(rho_bt A_bt, clip(rho_bt, 1-eps, 1+eps_high) A_bt) - beta k3_bt ]

    (N: the batch's completion tokens — token-level aggregation, as DAPO; ``clip_eps_high`` defaults to ``eps``;
    a larger one is DAPO's clip-higher.)

    advantages: [B] (one per sequence, broadcast over tokens) or [B, T]. ``weights`` [B, T] (detached; 1 when
    None): per-token importance weights of off-policy samples (``behaviour_weights``), which makes this the
    decoupled objective of AReaL (Fu et al. 2025) with ``old_logprobs`` as the proximal policy. Returns
    (loss, stats) where stats are detached token means: ``pg_loss``, ``kl``, ``clip_frac``, ``ratio``.
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    mask = mask.to(logprobs.dtype)
    n = _norm(mask, normalizer)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * adv
    high = clip_eps if clip_eps_high is None else clip_eps_high
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high) * adv
    surrogate = torch.minimum(unclipped, clipped)
    if weights is not None:
        surrogate = surrogate * weights.detach()
    pg = -(surrogate * mask).sum() / n
    kl = torch.zeros((), dtype=logprobs.dtype)
    if ref_logprobs is not None:
        kl = (kl_k3(logprobs, ref_logprobs) * mask).sum() / n
    loss = pg + kl_coef * kl
    with torch.no_grad():
        stats = {"pg_loss": pg.detach(), "kl": kl.detach(),
                 "clip_frac": (((unclipped != clipped).to(mask.dtype) * mask).sum() / n),
                 "ratio": (ratio * mask).sum() / n}
    return loss, stats


def behaviour_weights(proximal_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, mask: torch.Tensor,
                      cap: float, mode: str = "tis", normalizer: float | torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Importance weights that correct for tokens sampled by an older policy (an asynchronous rollout).

        w_bt = pi_prox(y_bt | y_<t) / pi_behav(y_bt | y_<t) = exp(proximal_logprobs - behaviour_logprobs)
        "tis":       w~_bt = min(w_bt, C)              truncated importance sampling (Ionides 2008; verl's
                                                       token-level rollout IS)
        "decoupled": w~_bt = w_bt * 1[w_bt <= C]       AReaL's decoupled PPO behaviour weight with its cap: a
                                                       token whose weight exceeds C is left out of the loss
        "sequence_tis": w~_bt = min(prod_t' w_bt', C)  truncated IS of the whole completion (verl's sequence-level
                                                       rollout IS): every token of row b gets its row's weight,
                                                       the product over the row's masked tokens

    proximal_logprobs: the trainer's log-probabilities before this update; behaviour_logprobs: the rollout's own,
    both [B, T] aligned with ``mask`` [B, T]. Returns detached (weights [B, T], stats): ``is_ratio_mean`` and
    ``is_ratio_max`` of w over masked tokens, ``is_truncated`` the share of masked tokens with w > C (means are
    over ``normalizer`` tokens when given: a micro-batch's share of the whole batch's mean; with "sequence_tis" w
    is the row's product at each of its tokens).
    """
    if mode not in ("tis", "decoupled", "sequence_tis"):
        raise ValueError(f"mode must be tis, decoupled or sequence_tis, got {mode!r}")
    with torch.no_grad():
        mask = mask.to(proximal_logprobs.dtype)
        log_w = (proximal_logprobs - behaviour_logprobs) * mask  # 0 off the mask: no overflow from padding
        if mode == "sequence_tis":
            log_w = log_w.sum(dim=-1, keepdim=True).expand_as(log_w)
        w = torch.exp(log_w)
        over = (w > cap) & (mask > 0)
        weights = torch.where(over, torch.zeros_like(w), w) if mode == "decoupled" else torch.clamp(w, max=cap)
        n = _norm(mask, normalizer)
        stats = {"is_ratio_mean": (w * mask).sum() / n,
                 "is_ratio_max": torch.where(mask > 0, w, torch.zeros_like(w)).max() if mask.any()
                 else torch.ones(()),
                 "is_truncated": over.to(mask.dtype).sum() / n}
    return weights, stats


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, normalizer: float | torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-mean negative log-likelihood: ``L = -(1/N) sum_bt mask_bt logprobs_bt``."""
    mask = mask.to(logprobs.dtype)
    loss = -(logprobs * mask).sum() / _norm(mask, normalizer)
    return loss, {"nll": loss.detach()}


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of per-token log-probabilities over the masked (completion) tokens: [B, T] -> [B]."""
    return (logprobs * mask.to(logprobs.dtype)).sum(dim=-1)


def mean_sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token mean log-probability over the masked tokens, ``sum_t mask_bt l_bt / max(1, sum_t mask_bt)``:
    [B, T] -> [B]. IPO's inputs (its target margin is defined on length-averaged log-ratios)."""
    mask = mask.to(logprobs.dtype)
    return (logprobs * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float, variant: str = "sigmoid", label_smoothing: float = 0.0,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Preference losses on sequence log-probabilities, all [P] -> scalar.

        h = (chosen - ref_chosen) - (rejected - ref_rejected)
        sigmoid (DPO, Rafailov et al. 2023), with label smoothing e (conservative DPO):
            L = -(1 - e) log sigma(beta h) - e log sigma(-beta h)
        ipo (Azar et al. 2023):  L = (h - 1 / (2 beta))^2

    For ``sigmoid`` pass summed log-probabilities (``sequence_logprobs``); for ``ipo`` pass length-averaged ones
    (``mean_sequence_logprobs``): its target margin 1/(2 beta) is defined per token, as the IPO authors advise
    (and TRL implements), so that it does not grow with completion length.

    Stats: ``reward_margin`` = mean beta h, ``pref_accuracy`` = share of pairs with h > 0.
    """
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    if variant == "sigmoid":
        losses = -(1 - label_smoothing) * torch.nn.functional.logsigmoid(beta * h) \
            - label_smoothing * torch.nn.functional.logsigmoid(-beta * h)
    elif variant == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"variant must be sigmoid or ipo, got {variant!r}")
    with torch.no_grad():
        stats = {"reward_margin": (beta * h).mean(), "pref_accuracy": (h > 0).float().mean()}
    return losses.mean(), stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_eps: float, normalizer: float | torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (PPO as in Ziegler et al. / OpenAI baselines), token mean over ``mask``:

        V_clip = old + clip(V - old, -eps, eps)
        L = 0.5 * (1/N) sum mask * max((V - R)^2, (V_clip - R)^2)

    All [B, T]. Stats: ``value_clip_frac`` (share of tokens where the clipped term is larger).
    """
    mask = mask.to(values.dtype)
    n = _norm(mask, normalizer)
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    plain, capped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * (torch.maximum(plain, capped) * mask).sum() / n
    with torch.no_grad():
        stats = {"value_loss": loss.detach(), "value_clip_frac": ((capped > plain).to(mask.dtype) * mask).sum() / n}
    return loss, stats


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reward-model loss (Bradley-Terry): ``L = -mean log sigma(s_chosen - s_rejected)``; [P] -> scalar."""
    loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    with torch.no_grad():
        stats = {"pref_accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean()}
    return loss, stats


# -- the registry ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loss:
    """A registered loss. ``objective(out, batch, spec, normalizer) -> (loss, stats)`` where ``out`` is the
    engine's forward of ``batch``'s rows: per-token log-probabilities [B, T] for ``model="policy"``, ``Values``
    for ``model="critic"``. Token losses (``paired=False``) get one micro-batch at a time and the normalizer of
    the whole batch; pair losses get all pairs at once (chosen rows, then their rejected rows) and ``None``.
    ``needs`` names the ``Experience`` fields the loss cannot do without; ``uses_old_logprobs``: with several
    epochs, the step loop freezes the policy's log-probabilities before the first one (``batch.old_logprobs``)."""

    objective: Callable
    needs: tuple[str, ...] = ()
    paired: bool = False
    model: str = "policy"
    uses_old_logprobs: bool = False


@dataclass
class Values:
    """A critic's forward: ``values`` [B, T] (the state before each token) and ``scores`` [B] (last token)."""

    values: torch.Tensor
    scores: torch.Tensor


LOSSES: Registry[Loss] = Registry("loss", "loss.name")


def _policy_gradient(logp: torch.Tensor, b: Experience, spec: LossSpec, normalizer):
    old = b.old_logprobs if b.old_logprobs is not None else logp.detach()
    weights, is_stats = None, {}
    if spec.off_policy != "none":
        weights, is_stats = behaviour_weights(old, b.behavior_logprobs, b.loss_mask, spec.is_cap, spec.off_policy,
                                            normalizer)
    loss, stats = policy_gradient_loss(logp, old, b.advantages, b.loss_mask, spec.clip_eps, b.ref_logprobs,
                                       spec.kl_coef, normalizer, weights, spec.clip_eps_high)
    return loss, {**stats, **is_stats}


def _sft(logp: torch.Tensor, b: Experience, spec: LossSpec, normalizer):
    return sft_loss(logp, b.loss_mask, normalizer)


def _dpo(logp: torch.Tensor, b: Experience, spec: LossSpec, normalizer=None):
    seq_logprobs = mean_sequence_logprobs if spec.variant == "ipo" else sequence_logprobs
    seq, ref = seq_logprobs(logp, b.loss_mask), seq_logprobs(b.ref_logprobs, b.loss_mask)
    half = seq.shape[0] // 2
    return dpo_loss(seq[:half], seq[half:], ref[:half], ref[half:], spec.beta, spec.variant, spec.label_smoothing)


def _value(out: Values, b: Experience, spec: LossSpec, normalizer):
    return value_loss(out.values, b.old_values, b.returns, b.loss_mask, spec.clip_eps, normalizer)


def _pairwise(out: Values, b: Experience, spec: LossSpec, normalizer=None):
    half = out.scores.shape[0] // 2
    return pairwise_loss(out.scores[:half], out.scores[half:])


LOSSES.register("policy_gradient", Loss(_policy_gradient, needs=("advantages",), uses_old_logprobs=True))
LOSSES.register("sft", Loss(_sft))
LOSSES.register("dpo", Loss(_dpo, needs=("ref_logprobs",), paired=True))
LOSSES.register("value", Loss(_value, needs=("returns", "old_values"), model="critic"))
LOSSES.register("pairwise", Loss(_pairwise, paired=True, model="critic"))

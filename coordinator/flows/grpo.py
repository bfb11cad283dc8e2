"""GRPO (Shao et al. 2024): group-normalised outcome advantages, clipped policy gradient, optional KL.

With ``max_staleness`` k > 0 the experience of later steps is collected while a step trains; samples then come
from up to k versions back, and ``off_policy`` ("tis", "decoupled" or "sequence_tis") corrects for it with the
rollout's own log-probabilities (``losses.behaviour_weights``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignmesh.coordinator.algos.advantages import group_normalized_advantages, informative_groups
from alignmesh.coordinator.algos.shaping import overlong_penalty
from alignmesh.coordinator.flows import checks
from alignmesh.coordinator.flows.base import FlowContext
from alignmesh.coordinator.flows.registry import FLOWS
from alignmesh.coordinator.flows.sequences import SequenceBatch


@dataclass
class GRPOParams:
    prompts_per_step: int = 32
    group_size: int = 8
    learning_rate: float = 1e-4
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    epochs: int = 1
    micro_batch_size: int = 0
    adv_eps: float = 1e-4
    off_policy: str = "none"  # none | tis | decoupled | sequence_tis
    is_cap: float = 2.0
    clip_eps_high: float | None = None  # DAPO clip-higher: the upper clip 1 + clip_eps_high (None: clip_eps)
    dynamic_sampling: int = 0  # DAPO dynamic sampling: at most this many extra rounds per step to fill the batch
    overlong_buffer: int = 0  # DAPO soft overlong punishment over the last N of max_new_tokens (0: off; at most all)

    def validate(self, where: str) -> None:
        from alignmesh.services.common.errors import ConfigError
        if self.group_size < 2:
            raise ConfigError(f"{where}.group_size: must be >= 2 to normalise within a group, got {self.group_size}")
        if self.prompts_per_step < 1 or self.learning_rate <= 0 or self.kl_coef < 0 or self.epochs < 1:
            raise ConfigError(f"{where}: prompts_per_step >= 1, learning_rate > 0, kl_coef >= 0, epochs >= 1")
        checks.off_policy(where, self)
        checks.at_least(where, self, 0, "overlong_buffer")
        checks.within(where, self, "dynamic_sampling", 0, 16)  # extra rounds per step: bounded work per step
        if self.clip_eps_high is not None:
            checks.within(where, self, "clip_eps_high", 0.0, 10.0)


@dataclass
class Round:
    examples: list
    batch: SequenceBatch
    advantages: torch.Tensor  # [P * G]
    versions: torch.Tensor  # [P * G]
    informative: torch.Tensor  # bool [P]
    rewards: torch.Tensor  # [P * G]
    lengths: torch.Tensor  # [P * G]


@FLOWS.register("grpo")
class GRPO:
    Params = GRPOParams
    asynchronous = True  # collect() may run ahead of training (max_staleness)
    episodes = True  # trains on multi-turn episodes when the job names an environment

    async def sample_round(self, ctx: FlowContext, step: int, attempt: int) -> Round:
        """G samples for each of P new prompts, their (shaped) rewards and group-normalised advantages."""
        p: GRPOParams = ctx.params
        examples = ctx.sampler.take(p.prompts_per_step)
        prompts, out, rewards = await ctx.sample(examples, p.group_size, step, attempt)
        if p.overlong_buffer:
            budget = ctx.config.sampling.max_new_tokens
            rewards = rewards + overlong_penalty(out.lengths, budget, min(p.overlong_buffer, budget))
        grouped = rewards.view(p.prompts_per_step, p.group_size)
        return Round(examples, ctx.rollout_batch(prompts, out, p.group_size),
                     group_normalized_advantages(grouped, p.adv_eps).view(-1), out.versions,
                     informative_groups(grouped), rewards, out.lengths)

    async def collect(self, ctx: FlowContext, step: int):
        """One step's experience: the informative groups' rows. With ``dynamic_sampling`` N (DAPO), up to N more
        rounds until P groups with mixed rewards are found; the first P of them are kept."""
        p: GRPOParams = ctx.params
        rounds = [await self.sample_round(ctx, step, 0)]
        while len(rounds) <= p.dynamic_sampling and sum(int(r.informative.sum()) for r in rounds) < \
                p.prompts_per_step:
            rounds.append(await self.sample_round(ctx, step, len(rounds)))
        informative = torch.cat([r.informative for r in rounds])
        if p.dynamic_sampling:
            informative &= torch.cumsum(informative.long(), 0) <= p.prompts_per_step
        keep = informative.repeat_interleave(p.group_size)
        batch = (ctx.concat([r.batch for r in rounds]) if len(rounds) > 1 else rounds[0].batch).select(keep)
        advantages = torch.cat([r.advantages for r in rounds])[keep]
        ref = None
        if ctx.live("kl_coef", p.kl_coef) > 0 and keep.any():
            with ctx.phase("reference"):
                ref = await ctx.reference.logprobs(batch.input_ids, batch.attention_mask, batch.prompt_lengths())
        rewards, lengths = torch.cat([r.rewards for r in rounds]), torch.cat([r.lengths for r in rounds])
        metrics = {"reward_mean": float(rewards.mean()), "informative_groups": float(keep.sum()) / p.group_size,
                   "samples": float(lengths.numel()), "prompt_crc": ctx.fingerprint([e for r in rounds
                                                                                    for e in r.examples]),
                   "completion_tokens": float(lengths.sum())}
        if p.dynamic_sampling:
            metrics["sampling_rounds"] = float(len(rounds))
        return batch, advantages, ref, torch.cat([r.versions for r in rounds])[keep], metrics

    async def run(self, ctx: FlowContext) -> None:
        p: GRPOParams = ctx.params
        async for step, (batch, adv, ref, versions, metrics) in ctx.experience(
                ctx.config.steps, lambda s: self.collect(ctx, s)):
            metrics.update(ctx.staleness(versions))
            if adv.numel():
                with ctx.phase("train"):
                    _, train = await ctx.trainer.train_step(
                        batch.input_ids, batch.attention_mask, batch.loss_mask, adv, ref,
                        loss=dict(name="policy_gradient", clip_eps=p.clip_eps, kl_coef=ctx.live("kl_coef", p.kl_coef),
                                  epochs=p.epochs, micro_batch_size=p.micro_batch_size, off_policy=p.off_policy,
                                  is_cap=p.is_cap, **({} if p.clip_eps_high is None else
                                                      {"clip_eps_high": p.clip_eps_high})),
                        learning_rate=ctx.learning_rate(p.learning_rate, metrics["version_lag"]),
                        behavior_logprobs=batch.behavior_logprobs if p.off_policy != "none" else None)
                with ctx.phase("sync"):
                    synced = await ctx.push_weights()
                metrics.update(train, sync_bytes=float(synced.bytes), sync_ms=synced.seconds * 1000)
            ctx.report(step, metrics)
            if step % int(ctx.live("eval_every", ctx.config.eval.every)) == 0 and step < ctx.config.steps:
                ctx.report_eval(step, {"accuracy": await ctx.evaluate()})

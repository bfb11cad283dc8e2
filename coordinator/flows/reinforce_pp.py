"""REINFORCE++ (Hu 2025): no critic, no groups; token returns carry a KL penalty to the reference and the
advantages are whitened over the whole batch."""

from __future__ import annotations

from dataclasses import dataclass

from alignmesh.coordinator.algos.advantages import reinforce_pp_advantages
from alignmesh.coordinator.flows import checks, sequences
from alignmesh.coordinator.flows.base import FlowContext
from alignmesh.coordinator.flows.registry import FLOWS


@dataclass
class ReinforcePPParams:
    prompts_per_step: int = 64
    samples_per_prompt: int = 4
    learning_rate: float = 1e-4
    kl_coef: float = 0.01
    clip_eps: float = 0.2
    off_policy: str = "none"  # none | tis | decoupled | sequence_tis (with max_staleness > 0)
    is_cap: float = 2.0

    def validate(self, where: str) -> None:
        checks.positive(where, self, "prompts_per_step", "samples_per_prompt", "learning_rate")
        checks.at_least(where, self, 0, "kl_coef", "clip_eps")
        checks.off_policy(where, self)


@FLOWS.register("reinforce_pp")
class ReinforcePP:
    Params = ReinforcePPParams
    asynchronous = True
    episodes = True  # trains on multi-turn episodes when the job names an environment

    async def collect(self, ctx: FlowContext, step: int):
        p: ReinforcePPParams = ctx.params
        prompts, out, rewards = await ctx.sample(ctx.sampler.take(p.prompts_per_step), p.samples_per_prompt, step)
        starts = [len(q) for q in prompts for _ in range(p.samples_per_prompt)]
        batch = ctx.rollout_batch(prompts, out, p.samples_per_prompt)
        with ctx.phase("reference"):
            ref = await ctx.reference.logprobs(batch.input_ids, batch.attention_mask, batch.prompt_lengths())
        width = out.completion_ids.shape[1]
        mask = sequences.take(batch.loss_mask, starts, width)
        adv = reinforce_pp_advantages(rewards, out.logprobs, sequences.take(ref, starts, width), mask,
                                      ctx.live("kl_coef", p.kl_coef))
        metrics = {"reward_mean": float(rewards.mean()), "samples": float(rewards.numel())}
        return batch, sequences.place(adv, starts, batch.input_ids.shape[1]), out.versions, metrics

    async def run(self, ctx: FlowContext) -> None:
        p: ReinforcePPParams = ctx.params
        async for step, (batch, adv, versions, metrics) in ctx.experience(ctx.config.steps,
                                                                          lambda s: self.collect(ctx, s)):
            metrics.update(ctx.staleness(versions))
            with ctx.phase("train"):
                _, train = await ctx.trainer.train_step(
                    batch.input_ids, batch.attention_mask, batch.loss_mask, adv,
                    loss=dict(name="policy_gradient", clip_eps=p.clip_eps, off_policy=p.off_policy, is_cap=p.is_cap),
                    learning_rate=ctx.learning_rate(p.learning_rate, metrics["version_lag"]),
                    behavior_logprobs=batch.behavior_logprobs if p.off_policy != "none" else None)
            with ctx.phase("sync"):
                await ctx.push_weights()
            ctx.report(step, {**metrics, **train})

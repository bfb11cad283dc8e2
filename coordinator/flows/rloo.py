"""RLOO (Ahmadian et al. 2024): REINFORCE with a leave-one-out baseline from the prompt's other samples."""

from __future__ import annotations

from dataclasses import dataclass

from alignmesh.coordinator.algos.advantages import informative_groups, rloo_advantages
from alignmesh.coordinator.flows import checks
from alignmesh.coordinator.flows.base import FlowContext
from alignmesh.coordinator.flows.registry import FLOWS


@dataclass
class RLOOParams:
    prompts_per_step: int = 32
    samples_per_prompt: int = 8
    learning_rate: float = 1e-4
    clip_eps: float = 0.2
    off_policy: str = "none"  # none | tis | decoupled | sequence_tis (with max_staleness > 0)
    is_cap: float = 2.0

    def validate(self, where: str) -> None:
        checks.positive(where, self, "prompts_per_step", "learning_rate")
        checks.at_least(where, self, 2, "samples_per_prompt")  # the leave-one-out baseline needs another sample
        checks.at_least(where, self, 0, "clip_eps")
        checks.off_policy(where, self)


@FLOWS.register("rloo")
class RLOO:
    Params = RLOOParams
    asynchronous = True
    episodes = True  # trains on multi-turn episodes when the job names an environment

    async def collect(self, ctx: FlowContext, step: int):
        p: RLOOParams = ctx.params
        k = p.samples_per_prompt
        prompts, out, rewards = await ctx.sample(ctx.sampler.take(p.prompts_per_step), k, step)
        grouped = rewards.view(-1, k)
        keep = informative_groups(grouped).repeat_interleave(k)
        batch = ctx.rollout_batch(prompts, out, k).select(keep)
        metrics = {"reward_mean": float(rewards.mean()), "samples": float(rewards.numel())}
        return batch, rloo_advantages(grouped).view(-1)[keep], out.versions[keep], metrics

    async def run(self, ctx: FlowContext) -> None:
        p: RLOOParams = ctx.params
        async for step, (batch, adv, versions, metrics) in ctx.experience(ctx.config.steps,
                                                                          lambda s: self.collect(ctx, s)):
            metrics.update(ctx.staleness(versions))
            if adv.numel():
                with ctx.phase("train"):
                    _, train = await ctx.trainer.train_step(
                        batch.input_ids, batch.attention_mask, batch.loss_mask, adv,
                        loss=dict(name="policy_gradient", clip_eps=p.clip_eps, off_policy=p.off_policy,
                                  is_cap=p.is_cap),
                        learning_rate=ctx.learning_rate(p.learning_rate, metrics["version_lag"]),
                        behavior_logprobs=batch.behavior_logprobs if p.off_policy != "none" else None)
                with ctx.phase("sync"):
                    await ctx.push_weights()
                metrics.update(train)
            ctx.report(step, metrics)

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

    def validate(self, where: str) -> None:
        checks.positive(where, self, "prompts_per_step", "learning_rate")
        checks.at_least(where, self, 2, "samples_per_prompt")  # the leave-one-out baseline needs another sample
        checks.at_least(where, self, 0, "clip_eps")


@FLOWS.register("rloo")
class RLOO:
    Params = RLOOParams

    async def run(self, ctx: FlowContext) -> None:
        p: RLOOParams = ctx.params
        k = p.samples_per_prompt
        async for step in ctx.steps(ctx.config.steps):
            examples = ctx.sampler.take(p.prompts_per_step)
            prompts, out, rewards = await ctx.sample(examples, k, step)
            grouped = rewards.view(-1, k)
            keep = informative_groups(grouped).repeat_interleave(k)
            metrics = {"reward_mean": float(rewards.mean()), "samples": float(rewards.numel())}
            if keep.any():
                batch = ctx.sequences([q for q in prompts for _ in range(k)],
                                      ctx.completions(out.completion_ids, out.lengths)).select(keep)
                with ctx.phase("train"):
                    _, train = await ctx.trainer.train_step(
                        batch.input_ids, batch.attention_mask, batch.loss_mask, rloo_advantages(grouped).view(-1)[keep],
                        loss=dict(name="policy_gradient", clip_eps=p.clip_eps),
                        learning_rate=ctx.live("learning_rate", p.learning_rate))
                with ctx.phase("sync"):
                    await ctx.push_weights()
                metrics.update(train)
            ctx.report(step, metrics)

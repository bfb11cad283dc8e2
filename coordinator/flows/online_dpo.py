"""Online DPO (Guo et al. 2024): sample, rank with the reward service, DPO on (best, worst), sync, repeat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignmesh.coordinator.flows import checks
from alignmesh.coordinator.flows.base import FlowContext
from alignmesh.coordinator.flows.registry import FLOWS


@dataclass
class OnlineDPOParams:
    prompts_per_step: int = 32
    samples_per_prompt: int = 4
    learning_rate: float = 5e-5
    beta: float = 1.0
    variant: str = "sigmoid"
    label_smoothing: float = 0.0

    def validate(self, where: str) -> None:
        checks.positive(where, self, "prompts_per_step", "learning_rate", "beta")
        checks.at_least(where, self, 2, "samples_per_prompt")
        checks.one_of(where, self, "variant", ("sigmoid", "ipo"))
        checks.within(where, self, "label_smoothing", 0.0, 0.49)


@FLOWS.register("online_dpo")
class OnlineDPO:
    Params = OnlineDPOParams

    async def run(self, ctx: FlowContext) -> None:
        p: OnlineDPOParams = ctx.params
        k = p.samples_per_prompt
        async for step in ctx.steps(ctx.config.steps):
            examples = ctx.sampler.take(p.prompts_per_step)
            prompts, out, rewards = await ctx.sample(examples, k, step)
            grouped = rewards.view(-1, k)
            best, worst = grouped.argmax(dim=1), grouped.argmin(dim=1)
            pairs = [i for i in range(len(examples)) if grouped[i, best[i]] > grouped[i, worst[i]]]
            metrics = {"reward_mean": float(rewards.mean()), "pairs": float(len(pairs))}
            if pairs:
                completions = ctx.completions(out.completion_ids, out.lengths)
                chosen = [completions[i * k + int(best[i])] for i in pairs]
                rejected = [completions[i * k + int(worst[i])] for i in pairs]
                batch = ctx.sequences([prompts[i] for i in pairs] * 2, chosen + rejected)
                with ctx.phase("reference"):
                    ref = await ctx.reference.logprobs(batch.input_ids, batch.attention_mask, batch.prompt_lengths())
                with ctx.phase("train"):
                    _, train = await ctx.trainer.train_step(
                        batch.input_ids, batch.attention_mask, batch.loss_mask, None, ref,
                        loss=dict(name="dpo", beta=p.beta, variant=p.variant, label_smoothing=p.label_smoothing),
                        learning_rate=ctx.live("learning_rate", p.learning_rate))
                with ctx.phase("sync"):
                    await ctx.push_weights()
                metrics.update(train)
            ctx.report(step, metrics)


__all__ = ["OnlineDPO", "OnlineDPOParams", "torch"]

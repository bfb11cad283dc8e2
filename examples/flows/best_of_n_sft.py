"""A user-defined flow, written outside the package: rejection-sampling fine-tuning ("best-of-n SFT").

Per step: sample n completions per prompt from the rollout replicas, keep the ones the reward service scores
best (and above a threshold), fine-tune on them with the trainer's SFT loss, push the new weights. Run it with

    algorithm: examples/flows/best_of_n_sft.py:BestOfNSFT
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Params:
    prompts_per_step: int = 32
    samples_per_prompt: int = 4
    learning_rate: float = 1e-4
    min_reward: float = 0.5


class BestOfNSFT:
    Params = Params

    async def run(self, ctx) -> None:
        p = ctx.params
        n = p.samples_per_prompt
        async for step in ctx.steps(ctx.config.steps):
            examples = ctx.sampler.take(p.prompts_per_step)
            prompts, out, rewards = await ctx.sample(examples, n, step)
            completions = ctx.completions(out.completion_ids, out.lengths)
            best = rewards.view(-1, n).argmax(dim=1)
            keep = [i for i in range(len(examples)) if rewards[i * n + int(best[i])] >= p.min_reward]
            metrics = {"reward_mean": float(rewards.mean()), "kept": float(len(keep))}
            if keep:
                batch = ctx.sequences([prompts[i] for i in keep], [completions[i * n + int(best[i])] for i in keep])
                with ctx.phase("train"):
                    _, train = await ctx.trainer.train_step(batch.input_ids, batch.attention_mask, batch.loss_mask,
                                                            loss={"name": "sft"},
                                                            learning_rate=ctx.live("learning_rate", p.learning_rate))
                with ctx.phase("sync"):
                    await ctx.push_weights()
                metrics.update(train)
            ctx.report(step, metrics)

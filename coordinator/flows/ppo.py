"""PPO for RLHF (Ouyang et al. 2022; Ziegler et al. 2019): KL-penalised token rewards, a critic, GAE, clipped
policy and value updates, weight sync. Needs a critic instance (``critic.replicas: 1`` in the cluster config)."""

from __future__ import annotations

from dataclasses import dataclass

from alignmesh.coordinator.algos.advantages import adaptive_kl_coef, gae, kl_penalized_rewards, whiten
from alignmesh.coordinator.flows import checks, sequences
from alignmesh.coordinator.flows.base import FlowContext
from alignmesh.coordinator.flows.registry import FLOWS
from alignmesh.services.common.errors import FailedPrecondition


@dataclass
class PPOParams:
    prompts_per_step: int = 64
    samples_per_prompt: int = 4
    learning_rate: float = 1e-4
    critic_learning_rate: float = 1e-4
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    epochs: int = 1
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.01
    kl_target: float = 0.0  # > 0: adaptive KL controller towards this KL per sequence
    kl_horizon: float = 10000.0
    whiten_advantages: bool = True

    def validate(self, where: str) -> None:
        checks.positive(where, self, "prompts_per_step", "samples_per_prompt", "learning_rate",
                        "critic_learning_rate", "epochs", "kl_horizon")
        checks.at_least(where, self, 0, "clip_eps", "value_clip_eps", "kl_coef", "kl_target")
        checks.within(where, self, "gamma", 0.0, 1.0)
        checks.within(where, self, "lam", 0.0, 1.0)


@FLOWS.register("ppo")
class PPO:
    Params = PPOParams

    async def run(self, ctx: FlowContext) -> None:
        p: PPOParams = ctx.params
        if ctx.critic is None:
            raise FailedPrecondition("algorithm: ppo needs a critic; set critic.replicas: 1 in the cluster config")
        kl_coef, n = p.kl_coef, p.samples_per_prompt
        async for step in ctx.steps(ctx.config.steps):
            examples = ctx.sampler.take(p.prompts_per_step)
            prompts, out, scores = await ctx.sample(examples, n, step)
            starts = [len(q) for q in prompts for _ in range(n)]
            batch = ctx.sequences([q for q in prompts for _ in range(n)], ctx.completions(out.completion_ids,
                                                                                         out.lengths))
            width, T = out.completion_ids.shape[1], batch.input_ids.shape[1]
            with ctx.phase("reference"):
                ref = await ctx.reference.logprobs(batch.input_ids, batch.attention_mask, batch.prompt_lengths())
            with ctx.phase("values"):
                values, _ = await ctx.critic.values(batch.input_ids, batch.attention_mask)
            mask = sequences.take(batch.loss_mask, starts, width)
            rewards = kl_penalized_rewards(scores, out.logprobs, sequences.take(ref, starts, width), mask,
                                           ctx.live("kl_coef", kl_coef))
            adv, returns = gae(rewards, sequences.take(values, starts, width), mask, p.gamma, p.lam)
            if p.whiten_advantages:
                adv = whiten(adv, mask)
            with ctx.phase("train"):
                _, train = await ctx.trainer.train_step(
                    batch.input_ids, batch.attention_mask, batch.loss_mask, sequences.place(adv, starts, T), ref,
                    loss=dict(name="policy_gradient", clip_eps=p.clip_eps, epochs=p.epochs),
                    learning_rate=ctx.live("learning_rate", p.learning_rate))
                _, critic = await ctx.critic.train_step(
                    batch.input_ids, batch.attention_mask, batch.loss_mask,
                    loss=dict(name="value", clip_eps=p.value_clip_eps, epochs=p.epochs),
                    learning_rate=p.critic_learning_rate, returns=sequences.place(returns, starts, T),
                    old_values=values)
            with ctx.phase("sync"):
                await ctx.push_weights()
            seq_kl = float(((out.logprobs - sequences.take(ref, starts, width)) * mask).sum(1).mean())
            if p.kl_target > 0:
                kl_coef = adaptive_kl_coef(kl_coef, seq_kl, p.kl_target, p.kl_horizon, len(examples) * n)
            ctx.report(step, {"reward_mean": float(scores.mean()), "samples": float(scores.numel()),
                              "seq_kl": seq_kl, "kl_coef": kl_coef, **train,
                              **{f"critic_{k}": v for k, v in critic.items()}})

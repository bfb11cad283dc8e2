"""GRPO (Shao et al. 2024): group-normalised outcome advantages, clipped policy gradient, optional KL."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignmesh.coordinator.algos.advantages import group_normalized_advantages, informative_groups
from alignmesh.coordinator.flows.base import FlowContext
from alignmesh.coordinator.flows.registry import FLOWS


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

    def validate(self, where: str) -> None:
        from alignmesh.services.common.errors import ConfigError
        if self.group_size < 2:
            raise ConfigError(f"{where}.group_size: must be >= 2 to normalise within a group, got {self.group_size}")
        if self.prompts_per_step < 1 or self.learning_rate <= 0 or self.kl_coef < 0 or self.epochs < 1:
            raise ConfigError(f"{where}: prompts_per_step >= 1, learning_rate > 0, kl_coef >= 0, epochs >= 1")


@FLOWS.register("grpo")
class GRPO:
    Params = GRPOParams

    async def run(self, ctx: FlowContext) -> None:
        p: GRPOParams = ctx.params
        async for step in ctx.steps(ctx.config.steps):
            examples = ctx.sampler.take(p.prompts_per_step)
            prompts, out, rewards = await ctx.sample(examples, p.group_size, step)
            grouped = rewards.view(p.prompts_per_step, p.group_size)
            advantages = group_normalized_advantages(grouped, p.adv_eps).view(-1)
            keep = informative_groups(grouped).repeat_interleave(p.group_size)
            batch = ctx.sequences([q for q in prompts for _ in range(p.group_size)],
                                  ctx.completions(out.completion_ids, out.lengths))
            metrics = {"reward_mean": float(rewards.mean()), "informative_groups": float(keep.sum()) / p.group_size,
                       "samples": float(out.lengths.numel()), "prompt_crc": ctx.fingerprint(examples),
                       "version_lag": float((ctx.version - out.versions).float().mean()),
                       "completion_tokens": float(out.lengths.sum())}
            kl_coef = ctx.live("kl_coef", p.kl_coef)
            if keep.any():
                batch, adv = batch.select(keep), advantages[keep]
                ref = None
                if kl_coef > 0:
                    with ctx.phase("reference"):
                        ref = await ctx.reference.logprobs(batch.input_ids, batch.attention_mask)
                with ctx.phase("train"):
                    _, train = await ctx.trainer.train_step(
                        batch.input_ids, batch.attention_mask, batch.loss_mask, adv, ref,
                        loss=dict(name="policy_gradient", clip_eps=p.clip_eps, kl_coef=kl_coef, epochs=p.epochs,
                                  micro_batch_size=p.micro_batch_size),
                        learning_rate=ctx.live("learning_rate", p.learning_rate))
                with ctx.phase("sync"):
                    synced = await ctx.push_weights()
                metrics.update(train, sync_bytes=float(synced.bytes), sync_ms=synced.seconds * 1000)
            ctx.report(step, metrics)
            if step % int(ctx.live("eval_every", ctx.config.eval.every)) == 0 and step < ctx.config.steps:
                ctx.report_eval(step, {"accuracy": await ctx.evaluate()})


__all__ = ["GRPO", "GRPOParams", "torch"]

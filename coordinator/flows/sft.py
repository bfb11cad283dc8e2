"""Supervised fine-tuning on (prompt, answer) pairs, or on multi-turn demonstrations (the model's turns trained,
the environment's answers only read): the warm start, or a job of its own."""

from __future__ import annotations

from dataclasses import dataclass

from alignmesh.coordinator.flows import checks
from alignmesh.coordinator.flows.base import FlowContext
from alignmesh.coordinator.flows.registry import FLOWS


@dataclass
class SFTParams:
    batch_size: int = 64
    learning_rate: float = 1e-3
    # Stop early once greedy accuracy on the dev split reaches this (checked every ``eval_every`` steps).
    target_dev_accuracy: float = 1.0
    eval_every: int = 10

    def validate(self, where: str) -> None:
        checks.positive(where, self, "batch_size", "learning_rate", "eval_every")
        checks.within(where, self, "target_dev_accuracy", 0.0, 1.0)


@FLOWS.register("sft")
class SFT:
    Params = SFTParams

    def __init__(self, max_steps: int | None = None):
        self.max_steps = max_steps

    async def run(self, ctx: FlowContext) -> None:
        p: SFTParams = ctx.params
        total = self.max_steps if self.max_steps is not None else ctx.config.steps
        async for step in ctx.steps(total):
            with ctx.phase("train"):
                batch = ctx.demonstrations(ctx.sampler.take(p.batch_size))
                _, metrics = await ctx.trainer.train_step(batch.input_ids, batch.attention_mask, batch.loss_mask,
                                                          loss=dict(name="sft"), learning_rate=p.learning_rate)
            ctx.report(step, metrics)
            if step % p.eval_every == 0 or step == total:
                with ctx.phase("sync"):
                    await ctx.push_weights()
                dev = await ctx.evaluate("dev")
                ctx.report_eval(step, {"dev_accuracy": dev})
                if dev >= p.target_dev_accuracy:
                    ctx.log(f"warm start reached dev accuracy {dev:.3f} at step {step}")
                    return

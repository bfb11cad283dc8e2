"""Reward-model training on preference pairs with the pairwise (Bradley-Terry) loss, on the critic instance.
The trained model is exported as a sequence-classification directory the reward service serves
(``reward.model`` in the cluster config)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignmesh.coordinator.data import Preference, answer_preferences, load_preferences_jsonl
from alignmesh.coordinator.flows import checks
from alignmesh.coordinator.flows.base import FlowContext
from alignmesh.coordinator.flows.registry import FLOWS
from alignmesh.services.common.errors import FailedPrecondition


@dataclass
class RewardModelParams:
    # JSONL of {"prompt", "chosen", "rejected"}; empty = synthetic pairs from the task's answers.
    pairs: str = ""
    batch_size: int = 64
    learning_rate: float = 1e-4
    eval_pairs: int = 500
    # Synthetic pairs only: rejected answers are "random" wrong numbers or "near" misses (+-1, +-10).
    negatives: str = "random"

    def validate(self, where: str) -> None:
        checks.positive(where, self, "batch_size", "learning_rate", "eval_pairs")
        checks.one_of(where, self, "negatives", ("random", "near"))


@FLOWS.register("reward_model")
class RewardModel:
    Params = RewardModelParams

    async def pref_accuracy(self, ctx: FlowContext, pairs: list[Preference]) -> float:
        batch = ctx.pair_batch(pairs)
        _, scores = await ctx.critic.values(batch.input_ids, batch.attention_mask)
        return float((scores[:len(pairs)] > scores[len(pairs):]).float().mean())

    async def run(self, ctx: FlowContext) -> None:
        p: RewardModelParams = ctx.params
        if ctx.critic is None:
            raise FailedPrecondition("algorithm: reward_model trains on the critic; set critic.replicas: 1")
        train = (load_preferences_jsonl(p.pairs) if p.pairs
                 else answer_preferences(ctx.data.train, ctx.config.seed, p.negatives))
        held_out = answer_preferences(ctx.data.test, ctx.config.seed + 1, p.negatives)[: p.eval_pairs]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(ctx.config.seed)).tolist()
        ctx.report_eval(0, {"pref_accuracy": await self.pref_accuracy(ctx, held_out)})
        async for step in ctx.steps(ctx.config.steps):
            idx = [order[((step - 1) * p.batch_size + j) % len(order)] for j in range(p.batch_size)]
            batch = ctx.pair_batch([train[i] for i in idx])
            with ctx.phase("train"):
                _, metrics = await ctx.critic.train_step(batch.input_ids, batch.attention_mask, batch.loss_mask,
                                                         loss=dict(name="pairwise"), learning_rate=p.learning_rate)
            ctx.report(step, metrics)
            if step % ctx.config.eval.every == 0 or step == ctx.config.steps:
                ctx.report_eval(step, {"pref_accuracy": await self.pref_accuracy(ctx, held_out)})
        await ctx.critic.save_checkpoint(f"{ctx.run_dir}/reward_model", export_hf=True)
        ctx.log(f"reward model exported to {ctx.run_dir}/reward_model/hf (serve it with reward.model)")

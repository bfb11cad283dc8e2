"""Offline DPO (Rafailov et al. 2023) on preference pairs; reference log-probabilities are computed once per pair
by the reference service and cached. Generation is only used to evaluate."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignmesh.coordinator.data import answer_preferences, load_preferences_jsonl
from alignmesh.coordinator.flows import checks
from alignmesh.coordinator.flows.base import FlowContext
from alignmesh.coordinator.flows.registry import FLOWS


@dataclass
class DPOParams:
    # JSONL of {"prompt", "chosen", "rejected"}; empty = synthetic pairs from the task's answers.
    pairs: str = ""
    batch_size: int = 64
    learning_rate: float = 1e-4
    beta: float = 1.0
    variant: str = "sigmoid"
    label_smoothing: float = 0.0

    def validate(self, where: str) -> None:
        checks.positive(where, self, "batch_size", "learning_rate", "beta")
        checks.one_of(where, self, "variant", ("sigmoid", "ipo"))
        checks.within(where, self, "label_smoothing", 0.0, 0.49)


@FLOWS.register("dpo")
class DPO:
    Params = DPOParams

    async def run(self, ctx: FlowContext) -> None:
        p: DPOParams = ctx.params
        pairs = load_preferences_jsonl(p.pairs) if p.pairs else answer_preferences(ctx.data.train, ctx.config.seed)
        cache: dict[int, torch.Tensor] = {}  # pair index -> reference logprobs of [chosen; rejected]
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(ctx.config.seed)).tolist()
        async for step in ctx.steps(ctx.config.steps):
            idx = [order[((step - 1) * p.batch_size + j) % len(order)] for j in range(p.batch_size)]
            batch = ctx.pair_batch([pairs[i] for i in idx])
            with ctx.phase("reference"):
                missing = [j for j, i in enumerate(idx) if i not in cache]
                if missing:
                    rows = torch.tensor(missing + [j + len(idx) for j in missing])
                    ref = await ctx.reference.logprobs(batch.input_ids[rows], batch.attention_mask[rows])
                    for n, j in enumerate(missing):
                        cache[idx[j]] = torch.stack([ref[n], ref[n + len(missing)]])
                width = batch.input_ids.shape[1]  # cached rows may come from batches of another width
                ref = torch.cat([torch.stack([_fit(cache[i][k], width) for i in idx]) for k in (0, 1)])
            with ctx.phase("train"):
                _, metrics = await ctx.trainer.train_step(
                    batch.input_ids, batch.attention_mask, batch.loss_mask, None, ref,
                    loss=dict(name="dpo", beta=p.beta, variant=p.variant, label_smoothing=p.label_smoothing),
                    learning_rate=ctx.live("learning_rate", p.learning_rate))
            ctx.report(step, metrics)
            if step % ctx.config.eval.every == 0 or step == ctx.config.steps:
                with ctx.phase("sync"):
                    await ctx.push_weights()
                if step < ctx.config.steps:
                    ctx.report_eval(step, {"accuracy": await ctx.evaluate()})


def _fit(row: torch.Tensor, width: int) -> torch.Tensor:
    """A right-padded logprob row cut or zero-padded to ``width`` (positions past a sequence's end are 0)."""
    return row[:width] if row.shape[0] >= width else torch.nn.functional.pad(row, (0, width - row.shape[0]))

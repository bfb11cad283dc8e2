"""The torch trainer's precision options: bf16 compute under autocast keeps fp32 master weights and optimizer
state and takes nearly the fp32 step; gradient checkpointing changes memory, not the step."""

from __future__ import annotations

import pytest
import torch

from alignmesh.services.trainer.backend import Experience, LossSpec
from alignmesh.services.trainer.torch_backend import TorchTrainerBackend


def batch() -> Experience:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 20, (16, 10), generator=g)
    mask = torch.ones_like(ids)
    loss_mask = torch.zeros(16, 10)
    loss_mask[:, 5:] = 1.0
    return Experience(ids, mask, loss_mask, advantages=torch.randn(16, generator=g))


def step(model_dir, **options) -> tuple[TorchTrainerBackend, dict, dict]:
    trainer = TorchTrainerBackend(str(model_dir), learning_rate=1e-3, seed=0, **options)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    _, stats = trainer.train_step(batch(), LossSpec("policy_gradient"), None)
    deltas = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}
    return trainer, stats, deltas


@pytest.fixture(scope="module")
def fp32(tiny_model_dir):
    return step(tiny_model_dir)


def test_bf16_compute_keeps_fp32_master_weights_and_optimizer_state(tiny_model_dir, fp32):
    trainer, stats, deltas = step(tiny_model_dir, dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim]
    assert state and all(t.dtype == torch.float32 for t in state)
    _, ref_stats, ref_deltas = fp32
    assert stats["loss"] == pytest.approx(ref_stats["loss"], abs=0.02)
    b = batch()  # the forward really runs in bf16: log-probabilities differ from fp32's, by bf16 rounding
    with torch.no_grad():
        mixed = trainer._engine().forward(b.input_ids, b.attention_mask)
        trainer.compute_dtype = torch.float32
        full = trainer._engine().forward(b.input_ids, b.attention_mask)
    assert mixed.dtype == torch.float32 and 0 < float((mixed - full).abs().max()) < 0.064
    # The update direction is the fp32 one up to bf16 rounding of the forward and backward matmuls.
    flat = torch.cat([deltas[n].flatten() for n in sorted(deltas)])
    ref = torch.cat([ref_deltas[n].flatten() for n in sorted(ref_deltas)])
    assert float(torch.nn.functional.cosine_similarity(flat, ref, dim=0)) > 0.98


def test_gradient_checkpointing_takes_the_same_step(tiny_model_dir, fp32):
    trainer, stats, deltas = step(tiny_model_dir, gradient_checkpointing=True)
    from alignmesh.services.compat.transformers import is_checkpointing

    assert is_checkpointing(trainer.model)
    _, ref_stats, ref_deltas = fp32
    assert stats["loss"] == pytest.approx(ref_stats["loss"], rel=1e-6)
    for name, delta in deltas.items():
        torch.testing.assert_close(delta, ref_deltas[name], rtol=1e-5, atol=1e-7)

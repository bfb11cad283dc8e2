"""A step whose gradient is NaN is skipped and reported, on the torch trainer and on DeepSpeed ZeRO-2 (Megatron
skips on the same global norm): the weights stay finite and unchanged, and the next good step trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignmesh.services.common.registry import load_plugins
from alignmesh.services.trainer.backend import Experience, LossSpec
from alignmesh.services.trainer.torch_backend import TorchTrainerBackend

PLUGIN = str(Path(__file__).with_name("nan_loss.py"))
POISON, CLEAN = LossSpec("maybe_nan_sft", params={"poison": 1.0}), LossSpec("maybe_nan_sft")


def batch() -> Experience:
    ids = torch.randint(3, 20, (4, 8), generator=torch.Generator().manual_seed(0))
    return Experience(ids, torch.ones(4, 8, dtype=torch.int64), torch.ones(4, 8))


def test_torch_trainer_skips_a_nan_step(tiny_model_dir):
    load_plugins([PLUGIN], "trainer.plugins")
    t = TorchTrainerBackend(str(tiny_model_dir), learning_rate=1e-3, seed=0)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    _, stats = t.train_step(batch(), POISON, None)
    assert stats["skipped_nonfinite"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    _, stats = t.train_step(batch(), CLEAN, None)
    assert stats["skipped_nonfinite"] == 0.0
    assert not all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    assert all(bool(torch.isfinite(v).all()) for v in t.model.state_dict().values())


def test_deepspeed_trainer_skips_a_nan_step(tiny_model_dir):
    pytest.importorskip("deepspeed")
    from alignmesh.services.trainer.parallel_backend import deepspeed_trainer

    load_plugins([PLUGIN], "trainer.plugins")
    ds = deepspeed_trainer(str(tiny_model_dir), learning_rate=1e-3, seed=0, processes=2, zero_stage=2,
                           dist_timeout_s=60, plugins=[PLUGIN])
    try:
        with ds.rank.gathered(ds.rank.names()) as full:
            before = {k: v.clone() for k, v in full.items()}
        _, stats = ds.train_step(batch(), POISON, None)
        assert stats["skipped_nonfinite"] == 1.0
        with ds.rank.gathered(ds.rank.names()) as full:
            assert all(torch.equal(before[k], v) for k, v in full.items())
        _, stats = ds.train_step(batch(), CLEAN, None)
        assert stats["skipped_nonfinite"] == 0.0
    finally:
        ds.close()

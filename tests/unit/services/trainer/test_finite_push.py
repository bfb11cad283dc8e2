"""A push skips its NaN/Inf pass only while the trainer can vouch for its weights: after a checked push, changed
only by optimizer steps with finite gradients from finite moments. Any load makes the next push check again, and
a poisoned load is withdrawn (a real gloo group of one; the replicas' side is in the weight-sync tests)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from alignmesh.deploy.local import free_port
from alignmesh.services.common.errors import FailedPrecondition
from alignmesh.services.common.registry import load_plugins
from alignmesh.services.models.loading import load_causal_lm
from alignmesh.services.sync.group import GroupSpec
from alignmesh.services.trainer.backend import Experience, LossSpec
from alignmesh.services.trainer.torch_backend import TorchTrainerBackend

PLUGIN = str(Path(__file__).with_name("nan_loss.py"))
POISON, CLEAN = LossSpec("maybe_nan_sft", params={"poison": 1.0}), LossSpec("maybe_nan_sft")
BUCKET = 256 * 1024


def batch() -> Experience:
    ids = torch.randint(3, 20, (4, 8), generator=torch.Generator().manual_seed(0))
    return Experience(ids, torch.ones(4, 8, dtype=torch.int64), torch.ones(4, 8))


@pytest.fixture
def trainer(tiny_model_dir):
    load_plugins([PLUGIN], "trainer.plugins")
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, None, True, dt.timedelta(seconds=30), wait_for_workers=False)
    t = TorchTrainerBackend(str(tiny_model_dir), learning_rate=1e-3, seed=0)
    t.join_sync_group(GroupSpec("solo", "127.0.0.1", port, 1, 0, "gloo", 30.0))
    yield t
    del store


def test_steps_keep_the_weights_vouched_for_and_a_load_makes_the_push_check(trainer, tiny_model_dir, tmp_path):
    assert not trainer.finite.known()  # nothing checked yet: the first push reads every bucket
    trainer.publish("solo", 1, BUCKET)
    assert trainer.finite.known()
    trainer.train_step(batch(), POISON, None)  # skipped: the weights did not change
    trainer.train_step(batch(), CLEAN, None)
    assert trainer.finite.known()
    trainer.publish("solo", 2, BUCKET)
    trainer.train_step(batch(), CLEAN, 2.0)  # a learning rate above 1: the next push checks again
    assert not trainer.finite.known()
    trainer.publish("solo", 3, BUCKET)
    assert trainer.finite.known()
    poisoned = load_causal_lm(str(tiny_model_dir))
    with torch.no_grad():
        poisoned.model.layers[0].mlp.up_proj.weight[1, 2] = float("inf")
    poisoned.save_pretrained(tmp_path / "poisoned")
    trainer.load_checkpoint(str(tmp_path / "poisoned"))
    assert not trainer.finite.known()
    with pytest.raises(FailedPrecondition, match=r"model.layers.0.mlp.up_proj.weight holds NaN or Inf; version 4 "
                                                  r"was withdrawn"):
        trainer.publish("solo", 4, BUCKET)
    with pytest.raises(FailedPrecondition, match="withdrawn"):  # still checked: a withdrawn push vouches nothing
        trainer.publish("solo", 5, BUCKET)


def test_loaded_moments_that_are_not_finite_keep_every_push_checked(trainer, tmp_path):
    trainer.train_step(batch(), CLEAN, None)
    with torch.no_grad():
        next(iter(trainer.optimizer.state.values()))["exp_avg"].view(-1)[0] = float("nan")
    trainer.save_checkpoint(str(tmp_path / "ckpt"), export_hf=False)
    trainer.load_checkpoint(str(tmp_path / "ckpt"))
    trainer.publish("solo", 1, BUCKET)  # the weights themselves are finite
    assert not trainer.finite.known()  # but a step from NaN moments could poison them

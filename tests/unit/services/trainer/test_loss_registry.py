"""The loss registry: a loss added from a module outside the package trains on the torch trainer and on DeepSpeed
ZeRO-2 (every rank loads it), with the value the formula gives by hand; bad names and missing inputs are
INVALID_ARGUMENT naming the field; knobs travel typed, 0 included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignmesh.protos.trainer.v1 import trainer_pb2
from alignmesh.services.common.errors import ConfigError, InvalidArgument
from alignmesh.services.common.registry import load_plugins
from alignmesh.services.models.logprobs import token_logprobs
from alignmesh.services.trainer.backend import Experience, LossSpec
from alignmesh.services.trainer.convert import loss_from_proto
from alignmesh.services.trainer.losses import LOSSES, Loss
from alignmesh.services.trainer.torch_backend import TorchTrainerBackend

PLUGIN = str(Path(__file__).with_name("plugin_loss.py"))


def batch(seed: int = 0, rows: int = 6, width: int = 9) -> Experience:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 20, (rows, width), generator=g)
    lengths = torch.randint(5, width + 1, (rows,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    loss_mask = mask.float()
    loss_mask[:, :4] = 0
    return Experience(ids * mask, mask, loss_mask, torch.randn(rows, generator=g))


def by_hand(model, b: Experience, coef: float) -> float:
    """L = -(coef / N) sum mask * A * logp, with the model's log-probabilities before the step."""
    with torch.no_grad():
        logp = token_logprobs(model, b.input_ids, b.attention_mask)
    n = float(b.loss_mask.sum())
    return float(-coef * (logp * b.loss_mask * b.advantages[:, None]).sum() / n)


@pytest.fixture(scope="module")
def custom_loss():
    load_plugins([PLUGIN], "trainer.plugins")
    assert "advantage_weighted_nll" in LOSSES
    return LossSpec("advantage_weighted_nll", params={"coef": 0.5})


def test_user_loss_trains_a_step_on_the_torch_trainer(tiny_model_dir, custom_loss):
    trainer = TorchTrainerBackend(str(tiny_model_dir), learning_rate=1e-3, seed=0)
    b = batch()
    want = by_hand(trainer.model, b, coef=0.5)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    step, stats = trainer.train_step(b, custom_loss, None)
    assert step == 1
    assert stats["loss"] == pytest.approx(want, rel=1e-5)
    assert stats["weighted_logp"] == pytest.approx(-want / 0.5, rel=1e-5)
    assert stats["tokens"] == float(b.loss_mask.sum()) and stats["grad_norm"] > 0
    moved = sum(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert moved == len(before)


def test_user_loss_trains_a_step_on_deepspeed_zero2(tiny_model_dir, custom_loss):
    pytest.importorskip("deepspeed")
    from alignmesh.services.trainer.parallel_backend import deepspeed_trainer

    single = TorchTrainerBackend(str(tiny_model_dir), learning_rate=1e-3, seed=0)
    b = batch(1, rows=7)
    want = by_hand(single.model, b, coef=0.5)
    _, ref = single.train_step(b, custom_loss, None)
    ds = deepspeed_trainer(str(tiny_model_dir), learning_rate=1e-3, seed=0, processes=2, zero_stage=2,
                           dist_timeout_s=60, plugins=[PLUGIN])  # rank 1 imports the plugin itself
    try:
        _, stats = ds.train_step(b, custom_loss, None)
    finally:
        ds.close()
    assert stats["loss"] == pytest.approx(want, rel=1e-4)
    assert stats["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    assert stats["tokens"] == float(b.loss_mask.sum())


def test_unknown_loss_and_missing_inputs_name_the_field(tiny_model_dir):
    trainer = TorchTrainerBackend(str(tiny_model_dir), seed=0)
    with pytest.raises(InvalidArgument, match=r"loss.name: unknown loss 'nope'; known: \[.*'policy_gradient'"):
        trainer.train_step(batch(), LossSpec("nope"), None)
    with pytest.raises(InvalidArgument) as err:  # a long name is quoted cut short, not echoed whole
        trainer.train_step(batch(), LossSpec("n" * 100_000), None)
    assert len(str(err.value)) < 400 and "(100002 characters)" in str(err.value)
    no_adv = batch()
    no_adv.advantages = None
    with pytest.raises(InvalidArgument, match="advantages: required by the policy_gradient loss"):
        trainer.train_step(no_adv, LossSpec("policy_gradient"), None)
    with pytest.raises(InvalidArgument, match="ref_logprobs: required by the dpo loss"):
        trainer.train_step(batch(), LossSpec("dpo"), None)
    with pytest.raises(InvalidArgument, match=r"loss.name: a policy trainer trains with .*got 'value'"):
        trainer.train_step(batch(), LossSpec("value"), None)


def test_a_name_claimed_twice_is_refused():
    with pytest.raises(ConfigError, match="loss 'sft' is registered twice"):
        LOSSES.register("sft", Loss(lambda *a: None))


def test_knobs_travel_typed_and_zero_is_sent():
    spec = loss_from_proto(trainer_pb2.LossSpec(name="policy_gradient", clip_eps=0.0, kl_coef=0.0,
                                                micro_batch_size=0, params={"coef": 0.0}))
    assert (spec.clip_eps, spec.kl_coef, spec.micro_batch_size, spec.params) == (0.0, 0.0, 0, {"coef": 0.0})
    defaults = loss_from_proto(trainer_pb2.LossSpec(name="dpo"))
    assert (defaults.clip_eps, defaults.epochs, defaults.beta, defaults.variant) == (0.2, 1, 0.1, "sigmoid")
    assert loss_from_proto(trainer_pb2.LossSpec(name="dpo", label_smoothing=0.25)).label_smoothing == 0.25
    for bad, field in ((dict(epochs=0), "loss.epochs"), (dict(beta=0.0), "loss.beta"),
                       (dict(clip_eps=-0.1), "loss.clip_eps"), (dict(params={"coef": float("nan")}), "coef")):
        with pytest.raises(InvalidArgument, match=field):
            loss_from_proto(trainer_pb2.LossSpec(name="policy_gradient", **bad))

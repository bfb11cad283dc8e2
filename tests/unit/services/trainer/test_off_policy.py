"""Off-policy correction: importance weights of the proximal policy against the behaviour policy, by hand."""

import math

import pytest
import torch

from alignmesh.services.common.errors import InvalidArgument
from alignmesh.services.trainer.backend import Experience, LossSpec
from alignmesh.services.trainer.losses import LOSSES, behaviour_weights, policy_gradient_loss
from alignmesh.services.trainer.step import merge_stats, resolve_loss, train_step

# one prompt token, then completion tokens; row 1 has one padding position
PROX = torch.tensor([[0.0, math.log(0.6), math.log(0.3), math.log(0.9)], [0.0, math.log(0.5), math.log(0.2), 0.0]])
BEHAV = torch.tensor([[0.0, math.log(0.3), math.log(0.3), math.log(0.1)], [0.0, math.log(0.5), math.log(0.8), -9.0]])
MASK = torch.tensor([[0.0, 1, 1, 1], [0.0, 1, 1, 0]])
# w = prox / behav on the mask: row 0: 2.0, 1.0, 9.0 ; row 1: 1.0, 0.25 (padding: -9 never enters)


def test_truncated_importance_sampling_weights_and_stats():
    w, stats = behaviour_weights(PROX, BEHAV, MASK, cap=2.5, mode="tis")
    expected = torch.tensor([[1.0, 2.0, 1.0, 2.5], [1.0, 1.0, 0.25, 1.0]])
    assert torch.allclose(w, expected, atol=1e-6)
    assert stats["is_ratio_mean"].item() == pytest.approx((2 + 1 + 9 + 1 + 0.25) / 5, abs=1e-5)
    assert stats["is_ratio_max"].item() == pytest.approx(9.0, abs=1e-5)
    assert stats["is_truncated"].item() == pytest.approx(1 / 5, abs=1e-6)


def test_decoupled_weights_leave_out_tokens_over_the_cap():
    w, stats = behaviour_weights(PROX, BEHAV, MASK, cap=2.5, mode="decoupled")
    assert torch.allclose(w * MASK, torch.tensor([[0.0, 2.0, 1.0, 0.0], [0.0, 1.0, 0.25, 0.0]]), atol=1e-6)
    assert stats["is_truncated"].item() == pytest.approx(1 / 5, abs=1e-6)
    with pytest.raises(ValueError, match="tis, decoupled or sequence_tis"):
        behaviour_weights(PROX, BEHAV, MASK, cap=2.5, mode="clip")


def test_sequence_weights_are_the_rows_truncated_products():
    """Row 0: 2.0 * 1.0 * 9.0 = 18 -> capped at 2.5 on all its tokens; row 1: 1.0 * 0.25 = 0.25 (under the cap).
    Stats over the 5 masked tokens, each carrying its row's ratio: mean (3 * 18 + 2 * 0.25) / 5, max 18, and the
    3 tokens of row 0 truncated."""
    w, stats = behaviour_weights(PROX, BEHAV, MASK, cap=2.5, mode="sequence_tis")
    assert torch.allclose(w * MASK, torch.tensor([[0.0, 2.5, 2.5, 2.5], [0.0, 0.25, 0.25, 0.0]]), atol=1e-6)
    assert stats["is_ratio_mean"].item() == pytest.approx((3 * 18 + 2 * 0.25) / 5, abs=1e-4)
    assert stats["is_ratio_max"].item() == pytest.approx(18.0, abs=1e-4)
    assert stats["is_truncated"].item() == pytest.approx(3 / 5, abs=1e-6)


def test_weighted_surrogate_by_hand():
    """At the proximal policy (rho = 1) the surrogate is w * A per token: L = -(1/N) sum w A."""
    adv = torch.tensor([1.0, -2.0])
    w, _ = behaviour_weights(PROX, BEHAV, MASK, cap=2.5, mode="tis")
    loss, _ = policy_gradient_loss(PROX, PROX, adv, MASK, 0.2, weights=w)
    expected = -((2.0 + 1.0 + 2.5) * 1.0 + (1.0 + 0.25) * -2.0) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # the gradient of each token's log-probability is -w A / N: the weight scales, it is not differentiated
    logp = PROX.clone().requires_grad_(True)
    loss, _ = policy_gradient_loss(logp, PROX, adv, MASK, 0.2, weights=w)
    loss.backward()
    assert torch.allclose(logp.grad, -(w * adv.unsqueeze(1) * MASK) / 5, atol=1e-6)


def test_on_policy_samples_give_weight_one_and_the_plain_loss():
    adv = torch.tensor([0.5, -1.0])
    w, stats = behaviour_weights(PROX, PROX, MASK, cap=2.0)
    assert torch.equal(w, torch.ones_like(w)) and stats["is_truncated"].item() == 0.0
    plain, _ = policy_gradient_loss(PROX, PROX, adv, MASK, 0.2)
    weighted, _ = policy_gradient_loss(PROX, PROX, adv, MASK, 0.2, weights=w)
    assert weighted.item() == plain.item()


def test_registered_loss_applies_the_correction_and_requires_behaviour_logprobs():
    ids = torch.zeros(2, 4, dtype=torch.int64)
    b = Experience(ids, torch.ones_like(ids), MASK, torch.tensor([1.0, -2.0]), behavior_logprobs=BEHAV)
    loss, stats = LOSSES.get("policy_gradient").objective(PROX, b, LossSpec(off_policy="tis", is_cap=2.5), None)
    assert loss.item() == pytest.approx(-((2.0 + 1.0 + 2.5) - 2 * 1.25) / 5, abs=1e-6)
    assert stats["is_ratio_max"].item() == pytest.approx(9.0, abs=1e-5)
    b.behavior_logprobs = None
    with pytest.raises(InvalidArgument, match="behavior_logprobs"):
        resolve_loss(b, LossSpec(off_policy="tis"), "policy")


def test_micro_batch_statistics_merge_to_the_whole_batch():
    """Means add up over micro-batches (each divided by the whole batch's tokens); a max stays a max."""
    whole = merge_stats({}, {"is_ratio_mean": 1.0, "is_ratio_max": 3.0})
    merge_stats(whole, {"is_ratio_mean": 0.5, "is_ratio_max": 9.0})
    merge_stats(whole, {"is_ratio_max": 4.0})
    assert whole == {"is_ratio_mean": 1.5, "is_ratio_max": 9.0}


class _Linear:
    """A minimal engine: per-token log-probabilities are a learnable bias per position."""

    data_rank, data_world = 0, 1

    def __init__(self):
        self.bias = torch.zeros(4, requires_grad=True)
        self.opt = torch.optim.SGD([self.bias], lr=0.1)

    def forward(self, ids, mask, prompt_lengths=None):
        return PROX[ids[:, 0]] + self.bias  # row r carries id r

    def backward(self, loss, boundary):
        loss.backward()

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self):
        self.opt.step()
        return True

    def grad_norm(self):
        return 0.0

    def set_lr(self, lr):
        pass

    def lr(self):
        return 0.1


@pytest.mark.parametrize("micro", [0, 1])
def test_step_loop_reports_the_same_importance_statistics_in_micro_batches(micro):
    ids = torch.tensor([[0] * 4, [1] * 4])
    b = Experience(ids, torch.ones_like(ids), MASK, torch.tensor([1.0, -2.0]), behavior_logprobs=BEHAV)
    stats = train_step(_Linear(), b, LossSpec(off_policy="tis", is_cap=2.5, micro_batch_size=micro))
    assert stats["is_ratio_mean"] == pytest.approx(13.25 / 5, abs=1e-5)
    assert stats["is_ratio_max"] == pytest.approx(9.0, abs=1e-5)
    assert stats["is_truncated"] == pytest.approx(0.2, abs=1e-6)


@pytest.mark.parametrize("knobs, field", [({"off_policy": "vtrace"}, "loss.off_policy"),
                                          ({"off_policy": "tis", "is_cap": 0.5}, "loss.is_cap"),
                                          ({"is_cap": float("nan")}, "loss.is_cap"),
                                          ({"clip_eps_high": -0.1}, "loss.clip_eps_high")])
def test_bad_off_policy_knobs_are_refused_by_name(knobs, field):
    from alignmesh.protos.trainer.v1 import trainer_pb2
    from alignmesh.services.trainer.convert import loss_from_proto

    with pytest.raises(InvalidArgument) as err:
        loss_from_proto(trainer_pb2.LossSpec(name="policy_gradient", **knobs))
    assert field in str(err.value)


def test_behaviour_logprobs_of_the_wrong_shape_are_refused():
    from alignmesh.coordinator.convert import train_request
    from alignmesh.services.trainer.convert import experience_from_proto

    ids = torch.zeros(2, 4, dtype=torch.int64)
    req = train_request(ids, torch.ones_like(ids), MASK, torch.ones(2), None, {}, None,
                        behavior_logprobs=torch.zeros(2, 3))
    with pytest.raises(InvalidArgument, match="behavior_logprobs"):
        experience_from_proto(req, vocab_size=10)

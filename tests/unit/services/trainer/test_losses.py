import math

import pytest
import torch

from alignmesh.services.trainer.losses import kl_k3, policy_gradient_loss, sft_loss


def test_policy_gradient_matches_hand_computation_with_clipping_and_padding():
    logp = torch.tensor([[0.0, math.log(0.5), math.log(0.9)], [0.0, math.log(0.2), 0.0]])
    old = torch.tensor([[0.0, math.log(0.25), math.log(0.9)], [0.0, math.log(0.4), 0.0]])
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])  # position 0 is prompt; [1, 2] is padding
    loss, stats = policy_gradient_loss(logp, old, adv, mask, clip_eps=0.2)
    # seq 0: ratios 2.0 -> min(2*1, 1.2*1) = 1.2 ; 1.0 -> 1.0. seq 1: ratio 0.5 -> min(-1.0, 0.8*-2=-1.6) = -1.6
    expected = -(1.2 + 1.0 - 1.6) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(2 / 3, abs=1e-6)
    assert stats["ratio"].item() == pytest.approx((2.0 + 1.0 + 0.5) / 3, abs=1e-6)


def test_padding_values_do_not_matter():
    logp = torch.tensor([[-1.0, -2.0]])
    old = logp.clone()
    mask = torch.tensor([[1.0, 0.0]])
    a, _ = policy_gradient_loss(logp, old, torch.tensor([1.0]), mask, 0.2)
    logp2 = torch.tensor([[-1.0, -50.0]])
    b, _ = policy_gradient_loss(logp2, logp2.clone(), torch.tensor([1.0]), mask, 0.2)
    assert a.item() == b.item() == pytest.approx(-1.0)


def test_on_policy_gradient_is_advantage_weighted_score():
    logp = torch.tensor([[-0.5, -1.5]], requires_grad=True)
    adv = torch.tensor([[2.0, -1.0]])
    loss, _ = policy_gradient_loss(logp, logp.detach(), adv, torch.ones(1, 2), 0.2)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, 0.5]]))  # -A / N


def test_kl_k3_values_and_term():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    # exp(r - l) - (r - l) - 1 = 0.5 + ln 2 - 1
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)
    assert kl_k3(ref, ref).item() == 0.0
    loss, stats = policy_gradient_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 1), 0.2, ref, kl_coef=0.1)
    assert loss.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1), abs=1e-6)
    assert stats["kl"].item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)


def test_all_zero_advantages_give_zero_policy_loss_and_gradient():
    logp = torch.randn(4, 5, requires_grad=True)
    loss, _ = policy_gradient_loss(logp, logp.detach(), torch.zeros(4), torch.ones(4, 5), 0.2)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logp.grad) == 0


def test_shared_normalizer_makes_micro_batches_sum_to_the_full_batch():
    torch.manual_seed(0)
    logp, old, adv = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4)
    mask = (torch.rand(4, 6) > 0.3).float()
    full, _ = policy_gradient_loss(logp, old, adv, mask, 0.2)
    n = mask.sum()
    parts = [policy_gradient_loss(logp[s], old[s], adv[s], mask[s], 0.2, normalizer=n)[0]
             for s in (slice(0, 1), slice(1, 4))]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), abs=1e-6)


def test_sft_loss_is_masked_token_mean_nll():
    logp = torch.tensor([[-9.0, -1.0, -3.0]])
    loss, stats = sft_loss(logp, torch.tensor([[0.0, 1.0, 1.0]]))
    assert loss.item() == pytest.approx(2.0) and stats["nll"].item() == pytest.approx(2.0)


def test_sequence_logprobs_sum_only_masked_tokens():
    from alignmesh.services.trainer.losses import sequence_logprobs

    lp = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, -9.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    assert torch.equal(sequence_logprobs(lp, mask), torch.tensor([-3.0, -0.5]))


def test_dpo_sigmoid_ipo_and_label_smoothing_by_hand():
    from alignmesh.services.trainer.losses import dpo_loss

    chosen, rejected = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    ref_c, ref_r = torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -2.0])
    # h = (c - rc) - (r - rr) = [0.5 - (-0.5), 0 - 1] = [1.0, -1.0]
    loss, stats = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.5)
    expected = (-math.log(1 / (1 + math.exp(-0.5))) - math.log(1 / (1 + math.exp(0.5)))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["pref_accuracy"].item() == 0.5 and stats["reward_margin"].item() == pytest.approx(0.0)
    smooth, _ = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.5, label_smoothing=0.1)
    ls = lambda x: math.log(1 / (1 + math.exp(-x)))  # noqa: E731
    by_hand = sum(-0.9 * ls(0.5 * h) - 0.1 * ls(-0.5 * h) for h in (1.0, -1.0)) / 2
    assert smooth.item() == pytest.approx(by_hand, abs=1e-6)
    ipo, _ = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.5, variant="ipo")
    assert ipo.item() == pytest.approx(((1.0 - 1.0) ** 2 + (-1.0 - 1.0) ** 2) / 2, abs=1e-6)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    from alignmesh.services.trainer.losses import dpo_loss

    c = torch.tensor([-2.0], requires_grad=True)
    r = torch.tensor([-2.0], requires_grad=True)
    loss, _ = dpo_loss(c, r, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=1.0)
    loss.backward()
    assert c.grad.item() == pytest.approx(-0.5) and r.grad.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(math.log(2))


def test_value_loss_clipping_by_hand():
    from alignmesh.services.trainer.losses import value_loss

    values = torch.tensor([[1.0, 0.0, 5.0]])
    old = torch.tensor([[0.0, 0.0, 5.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = value_loss(values, old, returns, mask, clip_eps=0.2)
    # token 0: V 1 -> clipped 0.2; max((1-2)^2, (0.2-2)^2) = 3.24 ; token 1: (0-1)^2 = 1 both ; token 2 masked
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.0) / 2, abs=1e-6)
    assert stats["value_clip_frac"].item() == pytest.approx(0.5)


def test_pairwise_loss_by_hand():
    from alignmesh.services.trainer.losses import pairwise_loss

    loss, stats = pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1.0)) + math.log(2)) / 2, abs=1e-6)
    assert stats["pref_accuracy"].item() == 0.5


def test_ipo_margin_is_per_completion_token_on_pairs_of_different_lengths():
    """IPO compares length-averaged log-ratios with 1/(2 beta): a pair whose chosen completion has 2 tokens and
    whose rejected one has 4 gets the same h as if both had one token with their mean log-probability."""
    from alignmesh.services.trainer.backend import Experience, LossSpec
    from alignmesh.services.trainer.losses import LOSSES

    # rows: chosen (2 completion tokens), then rejected (4 completion tokens); one prompt token in front
    logp = torch.tensor([[0.0, -1.0, -3.0, 0.0, 0.0], [0.0, -1.0, -1.0, -2.0, -4.0]])
    ref = torch.tensor([[0.0, -2.0, -2.0, 0.0, 0.0], [0.0, -1.0, -1.0, -1.0, -1.0]])
    loss_mask = torch.tensor([[0.0, 1, 1, 0, 0], [0.0, 1, 1, 1, 1]])
    b = Experience(torch.zeros(2, 5, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int64), loss_mask,
                   ref_logprobs=ref)
    # means: chosen -2.0 vs ref -2.0 -> 0.0; rejected -2.0 vs ref -1.0 -> -1.0; h = 0 - (-1) = 1.0
    # beta 0.25: target 1/(2 beta) = 2.0; L = (1 - 2)^2 = 1.0. (Summed log-probs would give h = 0 - (-4) = 4.)
    loss, stats = LOSSES.get("dpo").objective(logp, b, LossSpec("dpo", beta=0.25, variant="ipo"), None)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    assert stats["reward_margin"].item() == pytest.approx(0.25, abs=1e-6)
    sig, _ = LOSSES.get("dpo").objective(logp, b, LossSpec("dpo", beta=0.25), None)  # sigmoid keeps sums
    assert sig.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.25 * 4.0))), abs=1e-6)

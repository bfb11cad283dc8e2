import pytest
import torch

from alignmesh.coordinator.algos.advantages import group_normalized_advantages, informative_groups


def test_group_normalisation_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # mean 0.25, unbiased std = sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5
    adv = group_normalized_advantages(r, eps=0.0)
    assert torch.allclose(adv, torch.tensor([[1.5, -0.5, -0.5, -0.5]]))
    adv_eps = group_normalized_advantages(r, eps=1e-4)
    assert adv_eps[0, 0].item() == pytest.approx(0.75 / 0.5001, rel=1e-6)


def test_all_equal_group_gets_zero_and_is_not_informative():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    adv = group_normalized_advantages(r)
    assert torch.equal(adv[:2], torch.zeros(2, 3))
    assert informative_groups(r).tolist() == [False, False, True]


def test_groups_are_independent_and_centered():
    torch.manual_seed(0)
    r = torch.rand(5, 8)
    adv = group_normalized_advantages(r)
    assert torch.allclose(adv.mean(dim=1), torch.zeros(5), atol=1e-6)
    assert torch.allclose(group_normalized_advantages(r[2:3]), adv[2:3])


def test_unscaled_is_mean_centered_only_and_shape_checked():
    r = torch.tensor([[2.0, 0.0]])
    assert torch.equal(group_normalized_advantages(r, scale=False), torch.tensor([[1.0, -1.0]]))
    with pytest.raises(ValueError, match=r"rewards must be \[P, G\]"):
        group_normalized_advantages(torch.ones(4))


def test_rloo_leave_one_out_by_hand():
    from alignmesh.coordinator.algos.advantages import rloo_advantages

    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    # sample 0: 1 - (0 + 0 + 1) / 3 = 2/3 ; sample 1: 0 - (1 + 0 + 1) / 3 = -2/3
    assert torch.allclose(rloo_advantages(r), torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [0.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(3, 1))


def test_reinforce_pp_returns_kl_penalty_and_whitening_by_hand():
    from alignmesh.coordinator.algos.advantages import reinforce_pp_advantages

    rewards = torch.tensor([1.0, 0.0])
    logp = torch.tensor([[-1.0, -1.0, 0.0], [-2.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # kl: row0 [0.5, 0], row1 [-1]; beta 0.1 -> returns row0 [1 - 0.05, 1 - 0], row1 [0 + 0.1]
    adv = reinforce_pp_advantages(rewards, logp, ref, mask, kl_coef=0.1, eps=0.0)
    g = torch.tensor([0.95, 1.0, 0.1])
    expected = (g - g.mean()) / g.std()
    assert torch.allclose(adv[mask > 0], expected, atol=1e-6) and adv[0, 2] == 0 and adv[1, 1] == 0


def test_gae_by_hand_with_padding_and_dones():
    from alignmesh.coordinator.algos.advantages import gae

    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0], [0.1, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0 (ends at t=2): d2 = 1 - 0.6 = 0.4 ; d1 = 0 + 0.9*0.6 - 0.4 = 0.14 ; d0 = 0.9*0.4 - 0.2 = 0.16
    a2 = 0.4
    a1 = 0.14 + 0.45 * a2
    a0 = 0.16 + 0.45 * a1
    assert torch.allclose(adv[0], torch.tensor([a0, a1, a2, 0.0]))
    assert torch.allclose(ret[0], torch.tensor([a0 + 0.2, a1 + 0.4, a2 + 0.6, 0.0]))
    # row 1: one token, terminal: A = 0.5 - 0.1; padded values (9.0) never leak in
    assert torch.allclose(adv[1], torch.tensor([0.4, 0.0, 0.0, 0.0]))
    # an explicit done in the middle cuts the bootstrap from the next state
    dones = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    cut, _ = gae(rewards, values, mask, gamma=0.9, lam=0.5, dones=dones)
    assert cut[0, 1].item() == pytest.approx(0.0 - 0.4) and cut[0, 0].item() == pytest.approx(0.16 + 0.45 * -0.4)


def test_kl_penalised_rewards_whiten_and_adaptive_kl():
    from alignmesh.coordinator.algos.advantages import adaptive_kl_coef, kl_penalized_rewards, whiten

    logp = torch.tensor([[-1.0, -2.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    r = kl_penalized_rewards(torch.tensor([2.0]), logp, ref, torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.1)
    assert torch.allclose(r, torch.tensor([[-0.05, 0.1 + 2.0, 0.0]]))
    w = whiten(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]]), eps=0.0)
    assert torch.allclose(w, torch.tensor([[-2 ** -0.5, 2 ** -0.5, 0.0]]))
    assert adaptive_kl_coef(0.1, observed_kl=12.0, target=6.0, horizon=10.0) == pytest.approx(0.1 * 1.02)
    assert adaptive_kl_coef(0.1, observed_kl=5.7, target=6.0, horizon=10.0) == pytest.approx(0.1 * (1 - 0.005))

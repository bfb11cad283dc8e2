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

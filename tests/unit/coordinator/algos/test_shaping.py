import pytest
import torch

from alignmesh.coordinator.algos.shaping import overlong_penalty
from alignmesh.services.trainer.losses import policy_gradient_loss


def test_overlong_penalty_by_hand():
    # L = 16, C = 4: no penalty up to 12, linear to -1 at 16, -1 past it
    got = overlong_penalty(torch.tensor([3, 12, 13, 14, 16, 17]), max_len=16, cache=4)
    assert torch.allclose(got, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    with pytest.raises(ValueError, match="cache"):
        overlong_penalty(torch.tensor([1]), max_len=4, cache=0)


def test_clip_higher_lets_a_positive_advantage_grow_further_than_it_may_shrink():
    """DAPO's decoupled clip: [1 - eps_low, 1 + eps_high]. ratio 1.25 with A = 1: clipped to 1.2 by the symmetric
    clip (eps 0.2), kept at 1.25 with eps_high 0.28; ratio 0.7 with A = -1 is clipped at 0.8 either way."""
    logp = torch.log(torch.tensor([[1.25, 0.7]]))
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    sym, _ = policy_gradient_loss(logp, old, adv, mask, clip_eps=0.2)
    high, stats = policy_gradient_loss(logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    assert sym.item() == pytest.approx(-(1.2 - 0.8) / 2, abs=1e-6)
    assert high.item() == pytest.approx(-(1.25 - 0.8) / 2, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(0.5)

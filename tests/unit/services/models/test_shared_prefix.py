"""Shared-prefix log-probabilities (services/models/logprobs.py): the same values and the same gradients as the
plain forward, computing each run's shared leading tokens once; runs found as documented."""

from __future__ import annotations

import pytest
import torch

from alignmesh.services.models.loading import load_causal_lm
from alignmesh.services.models.logprobs import prefix_runs, shared_prefix_logprobs, token_logprobs
from alignmesh.services.models.tiny import create_model_dir


def rows(*seqs: list[int], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask, as the trainer receives them."""
    width = width or max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


# two groups of samples of one prompt each (prompts of 6 and 4 tokens), completions of different lengths, one
# completion repeated, a lone row, then two rows that share 5 leading tokens but not their prompts (lengths 3, 4)
BATCH = rows([1, 4, 5, 13, 6, 7, 9, 2], [1, 4, 5, 13, 6, 7, 10, 11, 2], [1, 4, 5, 13, 6, 7, 9, 2],
             [1, 4, 5, 13, 6, 7, 12], [1, 8, 13, 9, 3, 2], [1, 8, 13, 9, 14, 15, 16, 2], [1, 3, 13, 3, 5, 2],
             [1, 5, 13, 6, 7, 2], [1, 5, 13, 6, 7, 3, 2], width=10)
PROMPTS = torch.tensor([6, 6, 6, 6, 4, 4, 4, 3, 4])


def test_runs_and_their_shared_lengths():
    run_of_row, shared = prefix_runs(*BATCH, PROMPTS)
    assert run_of_row.tolist() == [0, 0, 0, 0, 1, 1, 2, 3, 4]
    assert shared.tolist() == [6, 4, 4, 3, 4]  # each run's prompt
    assert prefix_runs(*rows([1, 2, 3], [4, 5, 6]), torch.tensor([1, 1])) is None  # different prompts
    assert prefix_runs(*rows([1, 2, 3], [1, 2, 4]), torch.tensor([2, 3])) is None  # same tokens, other lengths
    assert prefix_runs(*rows([1, 2, 3], [1], [1, 2, 3]), torch.tensor([1, 1, 1])) is None  # a row too short
    ids, mask = rows([1, 2, 3, 4], [1, 2, 5])
    assert prefix_runs(ids, mask, torch.tensor([3, 3])) is None  # prompts differ at their last token
    assert prefix_runs(ids, mask, torch.tensor([2, 2]))[1].tolist() == [2]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    return {f: create_model_dir(root / f, seed=2, family=f, tie=tie, kv_heads=kv)
            for f, tie, kv in (("llama", False, 2), ("qwen2", True, 2), ("gemma", True, 1))}


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_same_logprobs_and_gradients_as_the_plain_forward(families, family):
    ids, mask = BATCH
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view(ids.shape)  # a loss that weighs every position
    results = []
    for shared in (False, True):
        torch.manual_seed(0)
        model = load_causal_lm(families[family])
        logp = shared_prefix_logprobs(model, ids, mask, PROMPTS) if shared else token_logprobs(model, ids, mask)
        (logp * weights).sum().backward()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_grads), (shared, shared_grads) = results
    assert torch.allclose(shared, plain, atol=1e-5), (shared - plain).abs().max()
    assert (plain[mask.bool()][1:] != 0).any()
    for name, grad in plain_grads.items():
        assert torch.allclose(shared_grads[name], grad, atol=1e-5, rtol=1e-4), name


def test_a_trainer_step_lands_on_the_same_weights(tiny_model_dir):
    """The torch trainer with ``shared_prefix`` on and off: three clipped policy-gradient steps with KL on the
    batch above give the same weights and statistics (to float rounding)."""
    from alignmesh.services.trainer.backend import Experience, LossSpec
    from alignmesh.services.trainer.torch_backend import TorchTrainerBackend

    ids, mask = BATCH
    loss_mask = mask.float().clone()
    loss_mask[torch.arange(10).unsqueeze(0) < PROMPTS.unsqueeze(1)] = 0  # the completions only
    adv = torch.tensor([1.0, -0.5, 1.0, -1.5, 0.7, -0.7, 0.3, 0.2, -0.2])
    ref = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1)) * 0.1 - 2.0
    out = []
    for shared in (False, True):
        backend = TorchTrainerBackend(str(tiny_model_dir), learning_rate=1e-3, shared_prefix=shared)
        stats = [backend.train_step(Experience(ids, mask, loss_mask, adv, ref), LossSpec(kl_coef=0.04), None)[1]
                 for _ in range(3)]
        out.append((stats, {n: p.detach().clone() for n, p in backend.model.named_parameters()}))
    (plain_stats, plain), (shared_stats, shared) = out
    for a, b in zip(plain_stats, shared_stats):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["kl"] == pytest.approx(b["kl"], abs=1e-5)
    start = load_causal_lm(tiny_model_dir).state_dict()
    # Adam divides by the gradient's running RMS, so where a gradient is ~0 float rounding moves single elements
    # by up to the learning rate: compare the whole update instead, which rounding cannot move by 0.1%
    moved = torch.cat([(plain[n] - start[n]).flatten() for n in plain])
    apart = torch.cat([(shared[n] - plain[n]).flatten() for n in plain])
    assert moved.norm() > 1e-2 and apart.norm() / moved.norm() < 1e-3, (apart.norm(), moved.norm())


def test_the_trainer_shares_prefixes_unless_checkpointing():
    """On by default for the torch trainer; gradient checkpointing keeps no KV cache, so it turns sharing off."""
    from alignmesh.deploy.serve import torch_trainer_options
    from alignmesh.services.common.settings import ClusterConfig

    cfg = ClusterConfig()
    assert torch_trainer_options(cfg)["shared_prefix"] is True
    cfg.trainer.gradient_checkpointing = True
    assert torch_trainer_options(cfg)["shared_prefix"] is False
    cfg.trainer.gradient_checkpointing, cfg.trainer.shared_prefix = False, False
    assert torch_trainer_options(cfg)["shared_prefix"] is False

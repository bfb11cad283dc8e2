"""Sleep and Wake on CPU, in-process with the real backends: the process's resident memory drops by about the bytes
offloaded, requests are refused while asleep, and Wake restores every byte (identical log-probabilities, an
identical next training step).

A 4.2M-parameter model (16.8 MB in float32; with AdamW state 50 MB) makes the drop stand well clear of the
allocator's noise; the bound is 80% of the bytes offloaded (what glibc returns to the OS after ``malloc_trim``
on this machine: 98-100%). With a GPU the same tests run on ``cuda`` too and check that the device memory
allocated drops by the bytes offloaded.
"""

from __future__ import annotations

import pytest
import torch

from alignmesh.services.common.errors import FailedPrecondition
from alignmesh.services.models.tiny import create_model_dir
from alignmesh.services.rollout.backend import SamplingParams
from alignmesh.services.rollout.hf import HFRolloutBackend
from alignmesh.services.trainer.backend import Experience, LossSpec
from alignmesh.services.trainer.torch_backend import TorchTrainerBackend

PARAMS = 4_201_728
BUFFERS = 2 * 32 * 4  # rotary inv_freq and original_inv_freq, float32


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def released(stats, device: str) -> None:
    """On CPU the process's resident memory drops; on a GPU the device memory allocated drops by the bytes offloaded."""
    if device == "cpu":
        assert stats.resident_before - stats.resident_after >= 0.8 * stats.bytes, stats
    else:
        assert stats.device_before - stats.device_after >= 0.99 * stats.bytes, stats  # AdamW steps stay on CPU


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    return create_model_dir(tmp_path_factory.mktemp("wide") / "m", seed=0, hidden=256, layers=4, ffn=1024)


@pytest.mark.parametrize("device", DEVICES)
def test_rollout_sleeps_and_wakes_to_the_same_samples(wide_model, device):
    backend = HFRolloutBackend(str(wide_model), device=device)
    assert sum(p.numel() for p in backend.model.parameters()) == PARAMS
    prompts = [[1, 4, 5, 16, 6], [1, 9, 9, 14]]
    params = SamplingParams(max_new_tokens=6, n=2, seed=3, temperature=1.0)
    before = backend.generate(prompts, params)
    stats = backend.sleep()
    assert stats.bytes == PARAMS * 4 + BUFFERS
    released(stats, device)
    with pytest.raises(FailedPrecondition, match="asleep: .* Wake it before this request"):
        backend.generate(prompts, params)
    with pytest.raises(FailedPrecondition, match="Wake it before loading weights"):
        backend.receiver.adopt({}, 5)
    nbytes, _ = backend.wake()
    assert nbytes == PARAMS * 4 + BUFFERS
    after = backend.generate(prompts, params)
    assert torch.equal(after.completion_ids, before.completion_ids) and torch.equal(after.logprobs, before.logprobs)
    assert backend.wake() == (0, 0.0)  # waking an awake model does nothing


def batch() -> Experience:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 20, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    loss_mask = torch.ones(4, 12)
    loss_mask[:, :5] = 0
    return Experience(ids, mask, loss_mask, torch.randn(4, generator=g))


@pytest.mark.parametrize("device", DEVICES)
def test_trainer_sleeps_with_its_optimizer_and_trains_on_as_if_it_never_had(wide_model, device):
    slept, kept = (TorchTrainerBackend(str(wide_model), learning_rate=1e-3, seed=0, device=device) for _ in range(2))
    loss = LossSpec("policy_gradient", clip_eps=0.2)
    for t in (slept, kept):
        t.train_step(batch(), loss, None)  # AdamW state now exists: step, exp_avg, exp_avg_sq
    stats = slept.sleep()
    steps = 4 * len(list(slept.model.parameters()))  # AdamW's step counter per parameter: a float32 scalar
    assert stats.bytes == PARAMS * 4 * 3 + BUFFERS + steps  # weights and AdamW's two moments
    released(stats, device)
    for call in (lambda: slept.train_step(batch(), loss, None), lambda: slept.manifest(),
                 lambda: slept.save_checkpoint("/nonexistent", False)):
        with pytest.raises(FailedPrecondition, match="asleep"):
            call()
    slept.wake()
    _, a = slept.train_step(batch(), loss, None)
    _, b = kept.train_step(batch(), loss, None)
    assert a["loss"] == b["loss"]
    assert all(torch.equal(x, y) for x, y in zip(slept.model.state_dict().values(), kept.model.state_dict().values()))


def test_bad_sleep_and_merge_requests_name_the_field(tiny_model_dir):
    import asyncio

    from alignmesh.protos.common.v1 import memory_pb2
    from alignmesh.services.common.errors import InvalidArgument
    from alignmesh.services.rollout.servicer import RolloutServicer
    from alignmesh.services.trainer.servicer import _merged

    servicer = RolloutServicer(HFRolloutBackend(str(tiny_model_dir)), vocab_size=20)
    with pytest.raises(InvalidArgument, match="level: must be 1"):
        asyncio.run(servicer.Sleep(memory_pb2.SleepRequest(level=2), None))
    with pytest.raises(InvalidArgument, match="merged: only a LoRA trainer merges"):
        _merged(TorchTrainerBackend(str(tiny_model_dir)), True)

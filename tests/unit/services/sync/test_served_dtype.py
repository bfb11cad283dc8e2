"""bf16 serving: an fp32 trainer pushes its weights cast to the receivers' bf16 over a real gloo group (half the
bytes, exactly the cast values), and the log-probability gap between the fp32 trainer and the bf16 replica after
a sync is bounded.

The bound: bf16 keeps 8 significant bits (relative rounding 2^-9 per value); through the tiny model's layers and
a 20-token softmax the measured gap on 64 random sequences is max 0.032 nats, mean 0.005 (seeds fixed). The test
allows twice that (max 0.064, mean 0.010): an importance ratio from such a gap stays within exp(0.064) = 1.066,
inside PPO's clip range 1 +- 0.2, so a bf16 rollout's log-probabilities are usable as the behaviour policy."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from alignmesh.services.models.loading import load_causal_lm
from alignmesh.services.models.logprobs import token_logprobs
from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.receiver import WeightReceiver
from alignmesh.services.sync.sender import named_weights, publish



def _pair(timeout_s: float = 30.0):
    """Rank 0 (sender) and rank 1 (receiver) of a real gloo group, in this process."""
    import datetime as dt
    import uuid

    import torch.distributed as dist

    from alignmesh.services.sync.group import GroupSpec, SyncGroup

    store = dist.TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=timeout_s), wait_for_workers=False)
    gid = uuid.uuid4().hex[:8]
    specs = [GroupSpec(gid, "127.0.0.1", store.port, 2, r, "gloo", timeout_s) for r in (0, 1)]
    with ThreadPoolExecutor(2) as pool:
        sender, receiver = pool.map(SyncGroup, specs)
    return store, sender, receiver


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    trainer = load_causal_lm(tiny_model_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights the replica does not have yet
        for p in trainer.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return trainer, load_causal_lm(tiny_model_dir, dtype="bfloat16").eval()


def test_an_fp32_trainer_pushes_bf16_weights_half_the_bytes_exactly_cast(models):
    trainer, replica = models
    store, sender, receiver = _pair()
    rx = WeightReceiver(replica)
    rx.join(receiver)
    named = named_weights(trainer)
    served = bk.served_as(bk.specs_of(named), torch.bfloat16)
    with ThreadPoolExecutor(2) as pool:
        sent = pool.submit(publish, sender, named, 1, 1 << 20, None, torch.bfloat16)
        got = pool.submit(rx.receive, sender.spec.group_id, 1, served, 1 << 20)
        stats, _ = sent.result(timeout=60), got.result(timeout=60)
    rx.commit(1)
    fp32_bytes = sum(s.nbytes for s in bk.specs_of(named))
    assert stats.bytes * 2 == fp32_bytes == 2_109_952
    with rx.serving() as version:
        assert version == 1
        for (name, p), (_, q) in zip(trainer.named_parameters(), replica.named_parameters()):
            assert q.dtype == torch.bfloat16 and torch.equal(q, p.detach().to(torch.bfloat16)), name
    sender.close(), receiver.close()

    torch.manual_seed(0)
    ids = torch.randint(0, trainer.config.vocab_size, (64, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        gap = (token_logprobs(trainer, ids, mask) - token_logprobs(replica, ids, mask)).abs()
    assert float(gap.max()) <= 0.064 and float(gap.mean()) <= 0.010
    assert float(gap.max()) > 0  # bf16 does round: the check compares two different models


def test_a_mismatched_served_dtype_is_refused_before_any_transfer(models):
    from alignmesh.services.common.errors import FailedPrecondition

    from alignmesh.services.sync.receiver import check_manifest

    trainer, replica = models
    rx = WeightReceiver(replica)  # holds bf16: an fp32 manifest is refused naming the first difference
    with pytest.raises(FailedPrecondition, match="is torch.float32.* on the sender, torch.bfloat16"):
        check_manifest(rx.own_specs(), bk.specs_of(named_weights(trainer)))
    check_manifest(rx.own_specs(), bk.served_as(bk.specs_of(named_weights(trainer)), torch.bfloat16))


def test_the_served_dtype_a_request_names_is_checked():
    from alignmesh.services.common.errors import InvalidArgument
    from alignmesh.services.trainer.convert import sync_dtype

    assert sync_dtype("") is None and sync_dtype("bfloat16") == torch.bfloat16
    for bad in ("int8", "bool", "float64"):
        with pytest.raises(InvalidArgument, match="dtype: weights are pushed as one of float32, bfloat16, float16"):
            sync_dtype(bad)

"""Parameters in persistent flat buckets: a push sends the training storage itself (no pack copy), the values and
the training are unchanged, checkpoints still save and load; and the cheap finiteness check of a bucket."""

from __future__ import annotations

import torch

from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.sender import finite
from alignmesh.services.trainer.backend import Experience, LossSpec
from alignmesh.services.trainer.torch_backend import TorchTrainerBackend


def pushed(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def test_laid_out_buckets_are_views_of_the_parameters(tiny_model_dir):
    trainer = TorchTrainerBackend(str(tiny_model_dir))
    params = pushed(trainer.model)
    before = {n: p.detach().clone() for n, p in params}
    plan = bk.plan(bk.specs_of(params), 256 * 1024)
    multi = [b for b in plan if len(b.specs) > 1]
    assert multi and all(bk.flat_view(b, dict(params)) is None for b in multi)  # separate storages: packed
    bk.lay_out(params, plan)
    assert all(torch.equal(p, before[n]) for n, p in params)
    for bucket in plan:
        view = bk.flat_view(bucket, dict(params))
        first = dict(params)[bucket.specs[0].name]
        assert view is not None and view.data_ptr() == first.data_ptr() and view.numel() == bucket.numel
        assert torch.equal(view, bk.pack(bucket, dict(params)))  # exactly what packing would send


def test_training_and_checkpoints_are_unchanged_by_the_layout(tiny_model_dir, tmp_path):
    a, b = TorchTrainerBackend(str(tiny_model_dir), seed=0), TorchTrainerBackend(str(tiny_model_dir), seed=0)
    a._lay_out(256 * 1024)
    ids = torch.randint(3, 20, (4, 9), generator=torch.Generator().manual_seed(0))
    batch = Experience(ids, torch.ones_like(ids), torch.ones(4, 9), torch.tensor([1.0, -1.0, 0.5, 0.0]))
    for _ in range(2):
        assert a.train_step(batch, LossSpec("policy_gradient"), None)[1]["loss"] == \
            b.train_step(batch, LossSpec("policy_gradient"), None)[1]["loss"]
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    a.save_checkpoint(str(tmp_path / "ckpt"), export_hf=True)  # safetensors refuses shared storage: handled
    assert all(bk.flat_view(bucket, dict(pushed(a.model))) is not None for bucket in a._plan)  # still laid out
    c = TorchTrainerBackend(str(tiny_model_dir), seed=1)
    c._lay_out(256 * 1024)
    c.load_checkpoint(str(tmp_path / "ckpt"))
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), c.model.state_dict().values()))
    assert all(bk.flat_view(bucket, dict(pushed(c.model))) is not None for bucket in c._plan)


def test_finiteness_of_a_bucket():
    x = torch.randn(1000)
    assert finite(x) and finite(x.to(torch.bfloat16)) and finite(torch.arange(5))
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[537] = bad
        assert not finite(y) and not finite(y.to(torch.bfloat16)) and not finite(y.to(torch.float16))
    big = torch.full((10,), 60000.0, dtype=torch.float16)  # its fp16 sum would overflow; accumulated in fp32
    assert finite(big)
    huge = torch.full((4,), 3e38)  # the fp32 sum overflows: checked element by element, finite
    assert finite(huge)

"""Each DeepSpeed shim is still needed: these fail once the library stops needing them (then delete the shim)."""

from __future__ import annotations

import datetime as dt
import os
import socket

import pytest
import torch
import torch.distributed as dist

deepspeed = pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed")

from alignmesh.services.compat.deepspeed import TARGET_VERSION, forget_groups, launcher_env  # noqa: E402

CONFIG = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2},
          "zero_allow_untested_optimizer": True}


def _group() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=dt.timedelta(seconds=30))


def _engine():
    model = torch.nn.Linear(4, 2)
    return deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=CONFIG,
                                dist_init_required=False)[0]


@pytest.fixture
def no_launcher_env():
    saved = {k: os.environ.pop(k) for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE") if k in os.environ}
    yield
    for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        os.environ.pop(k, None)
    os.environ.update(saved)
    if dist.is_initialized():
        dist.destroy_process_group()
    forget_groups()


def test_version_is_the_targeted_one():
    assert deepspeed.__version__ == TARGET_VERSION, "re-check the shims in services/compat/deepspeed.py"


def test_engine_still_demands_launcher_env(no_launcher_env):
    _group()
    with pytest.raises(AssertionError, match="LOCAL_RANK"):
        _engine()
    launcher_env(0, 0, 1)
    _engine().destroy()


def test_engine_still_caches_groups_across_process_groups(no_launcher_env):
    launcher_env(0, 0, 1)
    _group()
    _engine().destroy()
    dist.destroy_process_group()
    _group()
    with pytest.raises(ValueError, match="not registered"):
        _engine()
    forget_groups()
    _engine().destroy()

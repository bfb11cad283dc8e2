"""Each megatron-core CPU shim is still needed: the replaced originals still reach for CUDA. When one of these
fails, megatron-core runs that piece on CPU by itself: delete the shim."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("megatron.core", reason="the megatron extra is not installed")

import megatron.core  # noqa: E402

from alignmesh.services.compat.megatron import ORIGINALS, TARGET_VERSION, apply_cpu_shims  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the shims apply only without CUDA")
NO_CUDA = (AssertionError, RuntimeError)  # "Torch not compiled with CUDA enabled" / no device


def test_version_is_the_targeted_one():
    assert megatron.core.__version__ == TARGET_VERSION, "re-check the shims in services/compat/megatron.py"


def test_rotary_embedding_still_moves_to_cuda():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    apply_cpu_shims()
    rope = RotaryEmbedding(kv_channels=8, rotary_percent=1.0, use_cpu_initialization=True)
    with pytest.raises(NO_CUDA):
        ORIGINALS["RotaryEmbedding.get_emb"](rope, 4)
    assert rope.get_emb(4).shape == (4, 1, 1, 8)  # the shim: same embedding, on the CPU


def test_memory_buffer_still_allocates_on_cuda():
    from megatron.core.utils import GlobalMemoryBuffer

    apply_cpu_shims()
    with pytest.raises(NO_CUDA):
        ORIGINALS["GlobalMemoryBuffer.get_tensor"](GlobalMemoryBuffer(), (2, 3), torch.float32, "x")
    assert GlobalMemoryBuffer().get_tensor((2, 3), torch.float32, "x").device.type == "cpu"


def test_rng_tracker_still_needs_cuda_and_the_shim_forks_the_cpu_generator():
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker

    apply_cpu_shims()
    with pytest.raises(NO_CUDA):
        ORIGINALS["CudaRNGStatesTracker.add"](CudaRNGStatesTracker(), "r", 1)
    tracker = CudaRNGStatesTracker()
    tracker.add("r", 7)
    before = torch.get_rng_state()
    with tracker.fork("r"):
        first = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is untouched
    torch.manual_seed(7)
    assert torch.equal(first, torch.rand(3))  # the block ran under the named seed
    with tracker.fork("r"):
        second = torch.rand(3)
    assert not torch.equal(first, second)  # and the named state advanced

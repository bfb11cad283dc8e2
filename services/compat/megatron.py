"""megatron-core shims for running on CPU (target: megatron-core 0.16.1).

Megatron-core builds a GPTModel on CPU (``use_cpu_initialization``) and its tensor-parallel collectives run on
gloo, but a few places hard-code CUDA. Each shim below replaces one such place with the same computation on the
tensor's own device; ``apply_cpu_shims`` installs them only when CUDA is unavailable.
"""

from __future__ import annotations

import contextlib

import torch

TARGET_VERSION = "0.16.1"
ORIGINALS: dict[str, object] = {}  # what each shim replaced (its test checks the original still needs CUDA)


def _rotary_get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
    """``RotaryEmbedding.get_emb`` without its move of ``inv_freq`` to ``torch.cuda.current_device()``."""
    freqs = self.get_freqs_non_repeated(max_seq_len, offset)
    if not self.rotary_interleaved:
        emb = torch.cat((freqs, freqs), dim=-1)
    else:
        emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(freqs.shape[0], -1)
    return emb[:, None, None, :]


def _buffer_get_tensor(self, tensor_shape, dtype, name, mem_alloc_context=None) -> torch.Tensor:
    """``GlobalMemoryBuffer.get_tensor`` allocating on the CPU instead of ``torch.cuda.current_device()``."""
    required = 1
    for d in tensor_shape:
        required *= d
    buf = self.buffer.get((name, dtype))
    if buf is None or buf.numel() < required:
        buf = self.buffer[(name, dtype)] = torch.empty(required, dtype=dtype, device="cpu", requires_grad=False)
    return buf[0:required].view(*tensor_shape)


def _tracker_add(self, name: str, seed: int) -> None:
    """``CudaRNGStatesTracker.add`` keeping a CPU generator state per name instead of a CUDA one."""
    if seed in self.seeds_:
        raise Exception(f"seed {seed} already exists")
    self.seeds_.add(seed)
    if name in self.states_:
        raise Exception(f"rng state {name} already exists")
    saved = torch.get_rng_state()
    torch.manual_seed(seed)
    self.states_[name] = torch.get_rng_state()
    torch.set_rng_state(saved)


@contextlib.contextmanager
def _tracker_fork(self, name: str = "model-parallel-rng"):
    """``CudaRNGStatesTracker.fork`` on the CPU generator: run the block under the named state, keep the state
    it leaves for next time, and restore the caller's state."""
    if name not in self.states_:
        raise Exception(f"rng state {name} is not added")
    saved = torch.get_rng_state()
    torch.set_rng_state(self.states_[name])
    try:
        yield
    finally:
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(saved)


def apply_cpu_shims() -> None:
    if ORIGINALS or torch.cuda.is_available():
        return
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker
    from megatron.core.utils import GlobalMemoryBuffer

    for owner, attr, shim in ((RotaryEmbedding, "get_emb", _rotary_get_emb),
                              (GlobalMemoryBuffer, "get_tensor", _buffer_get_tensor),
                              (CudaRNGStatesTracker, "add", _tracker_add),
                              (CudaRNGStatesTracker, "fork", _tracker_fork)):
        ORIGINALS[f"{owner.__name__}.{attr}"] = getattr(owner, attr)
        setattr(owner, attr, shim)

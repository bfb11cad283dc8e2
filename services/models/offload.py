"""Sleep and Wake: a role that shares its device group with another gives its memory back while the other works.

``Offload`` moves tensors' storage out and back, keeping every tensor object (parameters, buffers, optimizer
state) so that nothing that refers to them has to change. On CUDA the storage goes to host memory and device
memory is freed (``torch.cuda.memory_allocated`` drops by the bytes offloaded); on CPU the host has nowhere cheaper
to keep it, so it goes to a private file and the process's resident memory drops. Wake restores every byte
exactly.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignmesh.services.common.errors import FailedPrecondition


@dataclass
class SleepStats:
    bytes: int  # storage moved out
    resident_before: int  # the process's resident memory (bytes)
    resident_after: int
    device_before: int  # torch.cuda.memory_allocated (0 on CPU)
    device_after: int
    seconds: float


def resident_bytes() -> int:
    """The process's resident set size (Linux ``/proc/self/statm``; 0 where it cannot be read)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def device_bytes(device: str) -> int:
    return torch.cuda.memory_allocated(torch.device(device)) if device.startswith("cuda") else 0


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise; no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Offload:
    """The storage of a list of tensors, out (``put``) and back (``take``)."""

    def __init__(self, device: str, directory: str | None = None):
        self.device, self.directory = device, directory
        self.tensors: list[torch.Tensor] = []
        self.host: list[torch.Tensor] = []  # CUDA: pinned host copies
        self.path: str | None = None  # CPU: the private file holding them

    @property
    def asleep(self) -> bool:
        return bool(self.tensors)

    def put(self, tensors: list[torch.Tensor]) -> SleepStats:
        if self.asleep:
            raise FailedPrecondition("sleep: already asleep; Wake first")
        start, rss, dev = time.perf_counter(), resident_bytes(), device_bytes(self.device)
        unique = list({id(t): t for t in tensors if t.numel()}.values())
        nbytes = sum(t.numel() * t.element_size() for t in unique)
        if self.device.startswith("cuda"):
            self.host = [t.data.to("cpu", copy=True).pin_memory() for t in unique]
        else:
            fd, self.path = tempfile.mkstemp(prefix="alignmesh-sleep-", suffix=".pt", dir=self.directory)
            os.close(fd)  # mkstemp: 0600, only this process's user reads it
            torch.save([t.data for t in unique], self.path)
        for t in unique:
            t.data = torch.empty(0, dtype=t.dtype, device=t.device)
        self.tensors = unique
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        trim_heap()
        return SleepStats(nbytes, rss, resident_bytes(), dev, device_bytes(self.device), time.perf_counter() - start)

    def take(self) -> tuple[int, float]:
        """Every tensor back as it was: (bytes restored, seconds)."""
        if not self.asleep:
            return 0, 0.0
        start = time.perf_counter()
        if self.path is not None:
            saved = torch.load(self.path, weights_only=True)
            os.unlink(self.path)
            self.path = None
        else:
            saved = self.host
        nbytes = 0
        for t, data in zip(self.tensors, saved):
            t.data = data.to(t.device, non_blocking=False)
            nbytes += data.numel() * data.element_size()
        self.tensors, self.host = [], []
        return nbytes, time.perf_counter() - start

    def close(self) -> None:
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)


def module_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """A module's parameters (tied ones once) and buffers."""
    return [p for _, p in module.named_parameters()] + [b for _, b in module.named_buffers()]


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's state tensors (AdamW: step, exp_avg, exp_avg_sq per parameter)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]

"""A stateless ``torch.distributed`` group for the weight side channel (gloo on CPU, NCCL on GPU).

The coordinator hosts the TCP store; each member builds its own process group from the store, so a group can
be formed, dropped and re-formed any number of times in one process (no global default group). Every
collective carries a timeout: a dead or silent peer makes it raise, never hang.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alignmesh.services.common.errors import Aborted

WATCHDOG_MARGIN = dt.timedelta(seconds=30)


class SyncError(Aborted):
    """A collective on the weight channel failed or timed out (ABORTED at a service boundary)."""


def choose_backend(requested: str, device: str) -> str:
    if requested in ("gloo", "nccl"):
        return requested
    if requested not in ("", "auto"):
        raise ValueError(f"backend must be auto, gloo or nccl, got {requested!r}")
    return "nccl" if str(device).startswith("cuda") else "gloo"


@dataclass
class GroupSpec:
    group_id: str
    store_host: str
    store_port: int
    world_size: int
    rank: int
    backend: str = "auto"
    timeout_s: float = 60.0


class SyncGroup:
    """One member of a weight-sync group."""

    def __init__(self, spec: GroupSpec, device: str = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.backend = choose_backend(spec.backend, device)
        self.timeout = dt.timedelta(seconds=spec.timeout_s)
        try:
            store = dist.TCPStore(spec.store_host, spec.store_port, is_master=False, timeout=self.timeout)
            prefixed = dist.PrefixStore(f"alignmesh/{spec.group_id}/", store)
            self.pg = self._make_pg(prefixed)
        except Exception as exc:  # store unreachable, peers missing past the timeout
            raise SyncError(f"cannot form sync group {spec.group_id} as rank {spec.rank}/{spec.world_size}: "
                            f"{exc}") from exc

    def _make_pg(self, store: dist.Store):
        if self.backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            # NCCL's watchdog tears the process down when a collective outlives its timeout; give it a margin
            # so that our own deadline (``wait``) fires first and the failure is an error, not a crash.
            opts._timeout = self.timeout + WATCHDOG_MARGIN
            torch.cuda.set_device(self.device)
            return dist.ProcessGroupNCCL(store, self.spec.rank, self.spec.world_size, opts)
        return dist.ProcessGroupGloo(store, self.spec.rank, self.spec.world_size, self.timeout)

    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> None:
        """Blocking broadcast with the group's timeout; raises SyncError on failure."""
        self.wait(self.broadcast_async(tensor, root))

    def broadcast_async(self, tensor: torch.Tensor, root: int = 0):
        opts = dist.BroadcastOptions()
        opts.rootRank = root
        opts.timeout = self.timeout
        try:
            return self.pg.broadcast([tensor], opts)
        except Exception as exc:
            raise SyncError(f"broadcast on group {self.spec.group_id} failed: {exc}") from exc

    def wait(self, work) -> None:
        """Wait for one collective. gloo blocks with the group's timeout; NCCL's ``wait`` only orders streams, so
        its completion is polled on the host against the same deadline and a late collective aborts the group."""
        try:
            if self.backend == "nccl":
                if not poll(work, self.timeout.total_seconds()):
                    self.close()
                    raise TimeoutError("not completed by the deadline; group aborted")
            work.wait(self.timeout)
        except Exception as exc:
            raise SyncError(f"broadcast on group {self.spec.group_id} failed or timed out after "
                            f"{self.timeout.total_seconds():.0f}s: {exc}") from exc

    def close(self) -> None:
        pg, self.pg = self.pg, None
        for method in ("abort", "shutdown") if self.backend == "nccl" else ("shutdown",):
            if pg is not None and hasattr(pg, method):
                try:
                    getattr(pg, method)()
                    return
                except Exception:
                    pass


def poll(work, timeout_s: float, interval_s: float = 0.0005) -> bool:
    """True once ``work`` completes (successfully or not), False if it has not by ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not work.is_completed():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True

"""Trainer side of the weight channel: plan, pack and broadcast, one bucket in flight while the next packs."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.group import SyncGroup


@dataclass
class PublishStats:
    version: int
    bytes: int
    buckets: int
    seconds: float


def named_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters in a stable order; tied weights appear once (``named_parameters`` de-duplicates)."""
    return [(name, p.detach()) for name, p in model.named_parameters()]


def publish(group: SyncGroup, named: list[tuple[str, torch.Tensor]], version: int,
            bucket_bytes: int, buffers: dict | None = None) -> PublishStats:
    """Each bucket is packed and checksummed while the previous one is on the wire; the trailer with the
    version and all checksums goes last. Without ``buffers`` at most two buckets are alive at once; with a dict
    the packed buckets are kept there and reused by the next publish (faster, one model's worth of memory)."""
    start = time.perf_counter()
    tensors = dict(named)
    plan = bk.plan(bk.specs_of(named), bucket_bytes)
    sums: list[tuple[int, int]] = []
    pending = None
    for i, bucket in enumerate(plan):
        key = (i, bucket.dtype, bucket.numel)
        flat = bk.pack(bucket, tensors, buffers.get(key) if buffers is not None else None)
        if buffers is not None:
            buffers[key] = flat  # reused next time: no fresh pages to fault in
        sums.append(bk.checksum(flat))
        work = group.broadcast_async(flat)
        if pending is not None:
            group.wait(pending[0])
        pending = (work, flat)  # keep the buffer alive until its broadcast completes
    if pending is not None:
        group.wait(pending[0])
    group.broadcast(bk.header(version, plan, sums).to(group.device))
    return PublishStats(version, sum(b.nbytes for b in plan), len(plan), time.perf_counter() - start)

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
            bucket_bytes: int) -> PublishStats:
    start = time.perf_counter()
    tensors = dict(named)
    plan = bk.plan(bk.specs_of(named), bucket_bytes)
    flats = [bk.pack(b, tensors) for b in plan] if len(plan) <= 2 else []
    sums = [bk.checksum(f) for f in flats] if flats else [bk.checksum(bk.pack(b, tensors)) for b in plan]
    group.broadcast(bk.header(version, plan, sums).to(group.device))
    pending = None
    for i, bucket in enumerate(plan):
        flat = flats[i] if flats else bk.pack(bucket, tensors)
        work = group.broadcast_async(flat)
        if pending is not None:
            group.wait(pending)
        pending = work
    if pending is not None:
        group.wait(pending)
    return PublishStats(version, sum(b.nbytes for b in plan), len(plan), time.perf_counter() - start)

"""Roles that share a device group take turns with its memory (the cluster's ``colocate`` groups).

Before a role works, the other roles of its group are put to sleep (``Sleep``: weights and optimizer state
offloaded) and it is woken (``Wake``: restored exactly): rollout awake while generating, trainer awake while
training. A weight push needs the trainer and the receivers awake together (``holding``). Every role starts
awake; a role outside every group is never touched.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, nullcontext
from typing import Callable

from alignmesh.protos.common.v1 import memory_pb2

log = logging.getLogger("alignmesh.colocation")


class Turns:
    def __init__(self, groups: list[list[str]], pools: dict, timeout_s: float = 120.0):
        self.groups = [list(g) for g in groups]
        self.pools = {role: pool for role, pool in pools.items() if pool is not None}
        self.awake = {role: True for g in self.groups for role in g}
        self.held: set[str] = set()
        self.lock = asyncio.Lock()
        self.timeout_s = timeout_s
        self.phase: Callable[[str], object] = lambda name: nullcontext()  # the flow's phase timer
        self.note: Callable[[str, float], None] = lambda name, value: None  # the flow's per-step sums
        for role in self.awake:
            if role in self.pools:
                self.pools[role].turns = self

    async def use(self, *roles: str) -> None:
        """Make ``roles`` awake and the others of their groups asleep (except roles being held)."""
        async with self.lock:
            for group in self.groups:
                wanted = [r for r in roles if r in group]
                if not wanted:
                    continue
                for role in group:
                    if role not in wanted and role not in self.held and self.awake[role]:
                        await self._switch(role, "Sleep")
                for role in wanted:
                    if not self.awake[role]:
                        await self._switch(role, "Wake")

    async def wake_all(self) -> None:
        """Every colocated role awake (Wake is a no-op on an awake replica): at a job's start, whatever an earlier
        job or a lost coordinator left asleep, and at its end, so the cluster is left as it was found."""
        async with self.lock:
            for role in self.awake:
                await self._switch(role, "Wake")

    @asynccontextmanager
    async def holding(self, *roles: str):
        """Keep ``roles`` awake together (a weight push: the trainer sends, the receivers receive)."""
        await self.use(*roles)
        self.held |= set(roles)
        try:
            yield
        finally:
            self.held -= set(roles)

    async def _switch(self, role: str, method: str) -> None:
        pool = self.pools[role]
        request = memory_pb2.SleepRequest(level=1) if method == "Sleep" else memory_pb2.WakeRequest()
        with self.phase("swap"):
            replies = await asyncio.gather(*(pool._timed(ep, method, request, self.timeout_s)
                                             for ep in pool.eps if ep.healthy))
        self.awake[role] = method == "Wake"
        if method == "Sleep":
            self.note(f"{role}_offloaded_bytes", float(sum(r.bytes for r in replies)))
            self.note(f"{role}_resident_released_bytes",
                      float(sum(r.resident_before - r.resident_after for r in replies)))
            self.note(f"{role}_device_released_bytes", float(sum(r.device_before - r.device_after for r in replies)))
        log.debug("%s: %s on %d replicas", role, method, len(replies))

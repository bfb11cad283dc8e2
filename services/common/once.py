"""At-most-once execution of non-idempotent RPCs (a training step, a checkpoint save) under client retries.

The caller puts one ``request_id`` on a logical call and keeps it across its retries. A retry of a call that is
still running waits for that same run (a client deadline cancels the RPC, not the work); a retry of one that has
finished gets its reply (or its error) again. Without a request id every call runs.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")


class Once:
    def __init__(self, keep: int = 64):
        self.keep = keep
        self._runs: OrderedDict[str, asyncio.Future] = OrderedDict()

    async def run(self, request_id: str, work: Callable[[], Awaitable[T]]) -> T:
        if not request_id:
            return await work()
        fut = self._runs.get(request_id)
        if fut is None:
            fut = asyncio.ensure_future(work())
            fut.add_done_callback(_retrieve)
            self._runs[request_id] = fut
            self._evict()
        return await asyncio.shield(fut)

    def _evict(self) -> None:
        while len(self._runs) > self.keep:
            oldest, fut = next(iter(self._runs.items()))
            if not fut.done():
                return  # never forget a run in progress
            del self._runs[oldest]


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # marks it retrieved: a failure that no retry asked for again is not logged as lost

"""The Sleep and Wake RPCs of every role that can share its device group (rollout, reference, trainer)."""

from __future__ import annotations

import asyncio

from alignmesh.protos.common.v1 import memory_pb2
from alignmesh.services.common.errors import FailedPrecondition, InvalidArgument
from alignmesh.services.common.threads import run_pinned


class SleepWakeMixin:
    """Needs ``self.backend`` with ``sleep(level) -> SleepStats`` and ``wake() -> (bytes, seconds)``."""

    def _able(self, what: str):
        fn = getattr(self.backend, what, None)
        if fn is None:
            raise FailedPrecondition(f"{what}: the {type(self.backend).__name__} backend cannot sleep; colocate roles "
                                     f"served by the torch trainer, the hf rollout or the reference")
        return fn

    async def Sleep(self, request, context):
        sleep = self._able("sleep")
        if request.level not in (0, 1):
            raise InvalidArgument("level", f"must be 1 (offload weights and optimizer state), got {request.level}")
        s = await asyncio.to_thread(run_pinned, sleep, request.level or 1)
        return memory_pb2.SleepResponse(bytes=s.bytes, resident_before=s.resident_before,
                                        resident_after=s.resident_after, device_before=s.device_before,
                                        device_after=s.device_after, seconds=s.seconds)

    async def Wake(self, request, context):
        nbytes, seconds = await asyncio.to_thread(run_pinned, self._able("wake"))
        return memory_pb2.WakeResponse(bytes=nbytes, seconds=seconds)

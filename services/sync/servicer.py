"""The weight-control RPCs shared by every receiving role (rollout, reference)."""

from __future__ import annotations

import asyncio

from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.services.common import metrics
from alignmesh.services.common.threads import run_pinned
from alignmesh.services.sync.convert import group_spec_from_proto, manifest_from_proto


class WeightControlMixin:
    """Needs ``self.backend`` with a ``receiver`` (WeightReceiver) and ``join_sync_group(spec)``."""

    role = "receiver"

    async def JoinSyncGroup(self, request, context):
        spec = group_spec_from_proto(request)
        backend = await asyncio.to_thread(run_pinned, self.backend.join_sync_group, spec)
        return weights_pb2.JoinSyncGroupResponse(group_id=spec.group_id, rank=spec.rank, backend=backend)

    async def PrepareWeightUpdate(self, request, context):
        specs, bucket_bytes = manifest_from_proto(request.manifest)
        staged = await asyncio.to_thread(run_pinned, self.backend.receiver.receive, request.group_id, request.version,
                                         specs, bucket_bytes)
        return weights_pb2.PrepareWeightUpdateResponse(version=staged.version, bytes=staged.bytes,
                                                       buckets=staged.buckets, seconds=staged.seconds)

    async def CommitWeightUpdate(self, request, context):
        version = await asyncio.to_thread(run_pinned, self.backend.receiver.commit, request.version)
        metrics.WEIGHT_VERSION.labels(self.role).set(version)
        return self._version()

    async def AbortWeightUpdate(self, request, context):
        self.backend.receiver.abort(request.version)
        return self._version()

    async def GetWeightVersion(self, request, context):
        return self._version()

    def _version(self) -> weights_pb2.WeightVersion:
        receiver = self.backend.receiver
        return weights_pb2.WeightVersion(version=receiver.version, staged_version=receiver.staged_version)

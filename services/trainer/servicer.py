"""TrainerService: decode -> backend -> encode."""

from __future__ import annotations

import asyncio
import functools

from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.protos.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from alignmesh.services.common import metrics
from alignmesh.services.common.convert import check_width
from alignmesh.services.common.errors import FailedPrecondition, InvalidArgument
from alignmesh.services.common.once import Once
from alignmesh.services.common.paths import PathPolicy
from alignmesh.services.common.sleep_servicer import SleepWakeMixin
from alignmesh.services.common.threads import run_pinned
from alignmesh.services.sync.convert import group_spec_from_proto, manifest_to_proto
from alignmesh.services.trainer import convert
from alignmesh.services.trainer.backend import TrainerBackend

DEFAULT_BUCKET_BYTES = 64 * 1024 * 1024


MAX_REQUEST_ID = 128


def _check_request_id(request_id: str) -> None:
    """Ids are kept (the last 64) to answer retries: bounded in length."""
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument("request_id", f"at most {MAX_REQUEST_ID} characters, got {len(request_id)}")


def _merged(backend, merged: bool) -> dict:
    """The ``merged`` option only where it means something: a LoRA trainer (the others push a plain model)."""
    if not merged:
        return {}
    if getattr(backend, "lora", None) is None:
        raise InvalidArgument("merged", "only a LoRA trainer merges its adapters; send merged: false")
    return {"merged": True}


class TrainerServicer(SleepWakeMixin, trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, backend: TrainerBackend, vocab_size: int, paths: PathPolicy, context: int = 0):
        self.backend = backend
        self.vocab_size = vocab_size
        self.context = context
        self.paths = paths  # where checkpoints may be written and read
        self.once = Once()  # TrainStep and SaveCheckpoint run at most once per request id

    async def TrainStep(self, request, context):
        batch = convert.experience_from_proto(request, self.vocab_size)
        check_width(batch.input_ids, self.context)
        loss = convert.loss_from_proto(request.loss)
        lr = convert.learning_rate_from_proto(request)

        _check_request_id(request.request_id)

        async def step():
            step, stats = await asyncio.to_thread(run_pinned, self.backend.train_step, batch, loss, lr)
            return trainer_pb2.TrainStepResponse(step=step, metrics=stats)
        return await self.once.run(request.request_id, step)

    async def SaveCheckpoint(self, request, context):
        if not request.path:
            raise InvalidArgument("path", "must name the checkpoint directory")
        path = str(self.paths.check("path", request.path))
        _check_request_id(request.request_id)

        async def save():
            info = await asyncio.to_thread(run_pinned, self.backend.save_checkpoint, path, request.export_hf)
            return convert.checkpoint_to_proto(info)
        return await self.once.run(request.request_id, save)

    async def LoadCheckpoint(self, request, context):
        if not request.path:
            raise InvalidArgument("path", "must name the checkpoint directory")
        path = str(self.paths.check("path", request.path))
        info = await asyncio.to_thread(run_pinned, self.backend.load_checkpoint, path)
        return convert.checkpoint_to_proto(info)

    async def GetState(self, request, context):
        return convert.state_to_proto(self.backend.state())

    async def JoinSyncGroup(self, request, context):
        spec = group_spec_from_proto(request)
        backend = await asyncio.to_thread(run_pinned, self.backend.join_sync_group, spec)
        return weights_pb2.JoinSyncGroupResponse(group_id=spec.group_id, rank=spec.rank, backend=backend)

    async def GetWeightManifest(self, request, context):
        dtype = convert.sync_dtype(request.dtype)
        specs = self.backend.manifest(dtype, **_merged(self.backend, request.merged))
        return manifest_to_proto(specs, request.bucket_bytes or DEFAULT_BUCKET_BYTES)

    async def PublishWeights(self, request, context):
        if request.version <= 0:
            raise InvalidArgument("version", f"must be > 0, got {request.version}")
        publish = functools.partial(self.backend.publish, **_merged(self.backend, request.merged))
        stats = await asyncio.to_thread(run_pinned, publish, request.group_id, request.version,
                                        request.bucket_bytes or DEFAULT_BUCKET_BYTES, convert.sync_dtype(request.dtype))
        metrics.WEIGHT_VERSION.labels("trainer").set(stats.version)
        return trainer_pb2.PublishWeightsResponse(version=stats.version, bytes=stats.bytes, buckets=stats.buckets,
                                                  seconds=stats.seconds)


    async def ComputeValues(self, request, context):
        compute = getattr(self.backend, "compute_values", None)
        if compute is None:
            raise FailedPrecondition("this trainer has no value head; start a critic (critic.replicas: 1)")
        ids, mask = convert.values_request_from_proto(request, self.vocab_size)
        values, scores = await asyncio.to_thread(run_pinned, compute, ids, mask)
        return convert.values_to_proto(values, scores)


def add_to_server(servicer: TrainerServicer, server) -> list[str]:
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)
    return [trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name]

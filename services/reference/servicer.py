"""ReferenceService: decode -> backend -> encode."""

from __future__ import annotations

import asyncio

from alignmesh.protos.reference.v1 import reference_pb2, reference_pb2_grpc
from alignmesh.services.common.convert import check_width
from alignmesh.services.common.local_socket import local_method
from alignmesh.services.common.paths import PathPolicy
from alignmesh.services.common.sleep_servicer import SleepWakeMixin
from alignmesh.services.common.threads import run_pinned
from alignmesh.services.reference import convert
from alignmesh.services.reference.backend import ReferenceBackend
from alignmesh.services.sync.servicer import WeightControlMixin


class ReferenceServicer(WeightControlMixin, SleepWakeMixin, reference_pb2_grpc.ReferenceServiceServicer):
    role = "reference"

    def __init__(self, backend: ReferenceBackend, vocab_size: int, paths: PathPolicy, context: int = 0):
        self.backend = backend
        self.vocab_size = vocab_size
        self.context = context
        self.paths = paths  # where models may be loaded from

    async def ComputeLogProbs(self, request, context):
        return await asyncio.to_thread(self._logprobs, request)

    def _logprobs(self, request) -> reference_pb2.LogProbsResponse:
        """On a worker thread (gRPC's hand-over, or the same-host socket's own): decode, compute, encode."""
        ids, mask, prompt_lengths = convert.batch_from_proto(request, self.vocab_size)
        check_width(ids, self.context)
        return convert.logprobs_to_proto(*run_pinned(self.backend.logprobs, ids, mask, prompt_lengths))

    def local_methods(self) -> dict:
        """What a same-host caller may call over the local socket (``services/common/local_socket.py``)."""
        return {"ComputeLogProbs": local_method("ComputeLogProbs", reference_pb2.LogProbsRequest, self._logprobs)}

    async def LoadWeights(self, request, context):
        if request.path:
            self.paths.check("path", request.path)
        path, version = convert.load_request_from_proto(request)
        await asyncio.to_thread(run_pinned, self.backend.load_weights, path, version)
        return self._version()


def add_to_server(servicer: ReferenceServicer, server) -> list[str]:
    reference_pb2_grpc.add_ReferenceServiceServicer_to_server(servicer, server)
    return [reference_pb2.DESCRIPTOR.services_by_name["ReferenceService"].full_name]

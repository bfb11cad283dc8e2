"""RolloutService: decode -> backend -> encode."""

from __future__ import annotations


from alignmesh.protos.rollout.v1 import rollout_pb2, rollout_pb2_grpc
from alignmesh.services.common.local_socket import local_method
from alignmesh.services.common.sleep_servicer import SleepWakeMixin
from alignmesh.services.common.threads import ComputeThread
from alignmesh.services.rollout import convert
from alignmesh.services.rollout.backend import RolloutBackend
from alignmesh.services.sync.servicer import WeightControlMixin


class RolloutServicer(WeightControlMixin, SleepWakeMixin, rollout_pb2_grpc.RolloutServiceServicer):
    role = "rollout"

    def __init__(self, backend: RolloutBackend, vocab_size: int, context: int = 0):
        self.backend = backend
        self.vocab_size = vocab_size
        self.context = context  # the model's positions (max_position_embeddings); 0: unknown
        self.compute = ComputeThread("generate")

    async def Generate(self, request, context):
        return await self.compute.run(self._generate, request)

    def _generate(self, request) -> rollout_pb2.GenerateResponse:
        """On the compute thread, decode and encode included: the event loop only hands the call over."""
        prompts = convert.prompts_from_proto(request, self.vocab_size)
        params = convert.sampling_from_proto(request.sampling)
        convert.check_budget(prompts, params, self.context)
        return convert.generation_to_proto(self.backend.generate(prompts, params))

    def local_methods(self) -> dict:
        """What a same-host caller may call over the local socket (``services/common/local_socket.py``)."""
        return {"Generate": local_method("Generate", rollout_pb2.GenerateRequest,
                                         lambda request: self.compute.call(self._generate, request))}


def add_to_server(servicer: RolloutServicer, server) -> list[str]:
    rollout_pb2_grpc.add_RolloutServiceServicer_to_server(servicer, server)
    return [rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name]

"""RewardService: decode -> scorer -> encode."""

from __future__ import annotations

import asyncio

from alignmesh.protos.reward.v1 import reward_pb2, reward_pb2_grpc
from alignmesh.services.common.local_socket import local_method
from alignmesh.services.reward import convert
from alignmesh.services.reward.registry import Registry


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, registry: Registry):
        self.registry = registry

    async def Score(self, request, context):
        return await asyncio.to_thread(self._score, request)

    def _score(self, request) -> reward_pb2.ScoreResponse:
        """On a worker thread (gRPC's hand-over, or the same-host socket's own): decode, score, encode."""
        items = convert.items_from_proto(request)
        name, scorer = self.registry.get(request.reward_fn)
        return convert.scores_to_proto(scorer.score(items), name)

    def local_methods(self) -> dict:
        """What a same-host caller may call over the local socket (``services/common/local_socket.py``)."""
        return {"Score": local_method("Score", reward_pb2.ScoreRequest, self._score)}

    async def ListRewardFunctions(self, request, context):
        return reward_pb2.ListRewardFunctionsResponse(names=sorted(self.registry.scorers),
                                                      default_name=self.registry.default)


def add_to_server(servicer: RewardServicer, server) -> list[str]:
    reward_pb2_grpc.add_RewardServiceServicer_to_server(servicer, server)
    return [reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name]

"""RewardService: decode -> scorer -> encode."""

from __future__ import annotations

import asyncio

from alignmesh.protos.reward.v1 import reward_pb2, reward_pb2_grpc
from alignmesh.services.reward import convert
from alignmesh.services.reward.registry import Registry


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, registry: Registry):
        self.registry = registry

    async def Score(self, request, context):
        items = convert.items_from_proto(request)
        name, scorer = self.registry.get(request.reward_fn)
        scores = await asyncio.to_thread(scorer.score, items)
        return convert.scores_to_proto(scores, name)

    async def ListRewardFunctions(self, request, context):
        return reward_pb2.ListRewardFunctionsResponse(names=sorted(self.registry.scorers),
                                                      default_name=self.registry.default)


def add_to_server(servicer: RewardServicer, server) -> list[str]:
    reward_pb2_grpc.add_RewardServiceServicer_to_server(servicer, server)
    return [reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name]

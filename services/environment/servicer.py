"""EnvironmentService: decode -> episode table -> encode."""

from __future__ import annotations

import asyncio

from alignmesh.protos.environment.v1 import environment_pb2, environment_pb2_grpc
from alignmesh.services.environment import convert
from alignmesh.services.environment.table import EpisodeTable


class EnvironmentServicer(environment_pb2_grpc.EnvironmentServiceServicer):
    def __init__(self, table: EpisodeTable):
        self.table = table

    async def Reset(self, request, context):
        starts = convert.starts_from_proto(request)
        name, first = await asyncio.to_thread(self.table.reset, request.environment, starts)
        return convert.reset_to_proto(name, [s[0] for s in starts], first)

    async def Step(self, request, context):
        actions = convert.actions_from_proto(request)
        transitions = await asyncio.to_thread(self.table.step, actions)
        return convert.step_to_proto([a[0] for a in actions], transitions)

    async def Close(self, request, context):
        return environment_pb2.CloseResponse(closed=self.table.close(list(request.episode_ids)))

    async def ListEnvironments(self, request, context):
        envs = self.table.environments
        return environment_pb2.ListEnvironmentsResponse(names=sorted(envs.classes), default_name=envs.default)


def add_to_server(servicer: EnvironmentServicer, server) -> list[str]:
    environment_pb2_grpc.add_EnvironmentServiceServicer_to_server(servicer, server)
    return [environment_pb2.DESCRIPTOR.services_by_name["EnvironmentService"].full_name]
